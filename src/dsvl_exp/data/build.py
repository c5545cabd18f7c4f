"""From the `data` config's flat values to train / eval conversations, checked before training.

Per dataset: read (format adapter) -> check images (missing: error or skip) -> check the image
count -> concatenate (random 1..N grouping) -> subset (samples or weight). Then the training
datasets are blended, shuffled and split (`eval_split`), and the held-out part joins the
separate eval datasets.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from dsvl_exp.data.checks import check_image_files, check_images_per_sample
from dsvl_exp.data.conversation import Conversation
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.formats import get_reader
from dsvl_exp.data.mixing import concatenate, split_train_eval, subsample
from dsvl_exp.data.synthetic import ensure_shapes_dataset

log = logging.getLogger(__name__)
SPEC_KEYS = {"format", "path", "image_dir", "samples", "weight", "concatenate"}


@dataclass
class BuiltData:
    train: list[Conversation]
    eval: list[Conversation]
    annotation_files: list[Path] = field(default_factory=list)
    skipped_missing_image: int = 0


def spec_path(spec: dict, data_path: str | None) -> Path:
    path = spec.get("path") or data_path
    if not path:
        raise DataError(f"dataset {spec.get('format')!r} has no path: set its path or data.data_path (the reference data root)")
    return Path(path).expanduser()


def read_one(spec: dict, data_path: str | None, max_images: int, on_missing_image: str, verify_images: bool,
             rng: random.Random, built: BuiltData) -> list[Conversation]:
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise DataError(f"dataset {spec.get('format')!r}: unknown key(s) {sorted(unknown)}; known: {sorted(SPEC_KEYS)}")
    name = spec.get("format", "native")
    path = spec_path(spec, data_path)
    reader = get_reader(name, path)
    image_dir = Path(spec["image_dir"]).expanduser() if spec.get("image_dir") else None
    loaded = reader(path, rng, max_images, image_dir)
    built.annotation_files += loaded.annotation_files
    conversations, skipped = check_image_files(loaded.conversations, on_missing_image, verify_images)
    built.skipped_missing_image += skipped
    if skipped:
        log.warning("dataset %s (%s): skipped %d sample(s) with a missing image (data.on_missing_image=skip)", name, path, skipped)
    if not conversations:
        raise DataError(f"dataset {name} ({path}): no samples left after filtering ({len(loaded.conversations)} read, "
                        f"{skipped} skipped for missing images); check the files and the filters")
    check_images_per_sample(conversations, max_images)
    conversations = concatenate(conversations, int(spec.get("concatenate") or 1), max_images, rng)
    conversations = subsample(conversations, spec.get("samples", "all"), spec.get("weight"), rng, name)
    log.info("dataset %s (%s): %d sample(s)", name, path, len(conversations))
    return conversations


def build_conversations(
    synthetic: dict | None,
    train: list[dict],
    eval: list[dict],
    data_path: str | None = None,
    eval_split: float = 0.0,
    max_images_per_sample: int = 8,
    on_missing_image: str = "error",
    verify_images: bool = True,
    seed: int = 0,
) -> BuiltData:
    train_specs, eval_specs = list(train), list(eval)
    if synthetic is not None:
        root = ensure_shapes_dataset(**synthetic)
        train_specs.insert(0, {"format": "native", "path": str(root / "train.jsonl")})
        eval_specs.insert(0, {"format": "native", "path": str(root / "eval.jsonl")})
    if not train_specs:
        raise DataError("no training data: set data.synthetic or list datasets under data.train")
    built = BuiltData([], [])

    def read_all(specs: list[dict], role: str) -> list[Conversation]:
        conversations = []
        for index, spec in enumerate(specs):
            # One generator per dataset: adding a dataset never changes another's draws.
            rng = random.Random(f"{seed}/{role}/{index}/{spec.get('format')}")
            conversations += read_one(dict(spec), data_path, max_images_per_sample, on_missing_image, verify_images, rng, built)
        return conversations

    blend = read_all(train_specs, "train")
    built.train, held_out = split_train_eval(blend, eval_split, random.Random(f"{seed}/split"))
    built.eval = held_out + read_all(eval_specs, "eval")
    return built

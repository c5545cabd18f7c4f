"""From the `data` config's flat values to train / eval conversations, checked before training.

Per dataset: read (format adapter) -> check images (missing: error or skip) -> check the image
count -> concatenate (random 1..N grouping) -> subset (samples or weight). Then the training
datasets are blended, shuffled and split (`eval_split`), and the held-out part joins the
separate eval datasets.

What each training sample is made of (which records, in which concatenation group) is kept in
`BuiltData.draws`, so `EpochDraws` can draw the same samples again for another epoch
(`data.redraw_each_epoch`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dsvl_exp.data.checks import check_image_files, check_images_per_sample
from dsvl_exp.data.conversation import Conversation
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.formats import get_reader
from dsvl_exp.data.mixing import concatenation_groups, merge_conversations, split_train_eval, subsample
from dsvl_exp.data.record_checks import STRAY_PLACEHOLDER, check_record_texts
from dsvl_exp.data.snapshot import gc_paused, load_snapshot, save_snapshot, snapshot_path
from dsvl_exp.data.synthetic import ensure_shapes_dataset

log = logging.getLogger(__name__)
SPEC_KEYS = {"format", "path", "image_dir", "samples", "weight", "concatenate"}


@dataclass
class DatasetDraws:
    """One dataset's records as drawn at build time, and how its samples are made of them."""

    name: str
    base: list[Conversation]  # the kept records' conversations (build-time draw)
    kept: list[int]  # each base conversation's record index (what the image check kept)
    groups: list[tuple[int, ...]]  # concatenation groups, indices into `base`
    redraw: Callable[[random.Random], list[Conversation]] | None  # the reader's draw; None: nothing random
    concatenate: int

    def sample(self, group: int) -> Conversation:
        members = self.groups[group]
        return self.base[members[0]] if len(members) == 1 else merge_conversations([self.base[i] for i in members])


@dataclass
class BuiltData:
    train: list[Conversation]
    eval: list[Conversation]
    annotation_files: list[Path] = field(default_factory=list)
    skipped_missing_image: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # preprocessing rule -> records dropped (logged)
    draws: list[DatasetDraws] = field(default_factory=list)  # one per training dataset
    train_refs: list[tuple[int, int]] = field(default_factory=list)  # train[i] = draws[d].sample(g)
    key: str = ""  # what decided the conversations (files' size and mtime, specs, seed): for caches


def spec_path(spec: dict, data_path: str | None) -> Path:
    path = spec.get("path") or data_path
    if not path:
        raise DataError(f"dataset {spec.get('format')!r} has no path: set its path or data.data_path (the reference data root)")
    return Path(path).expanduser()


def read_one(spec: dict, data_path: str | None, max_images: int, on_missing_image: str, verify_images,
             rng: random.Random, built: BuiltData, cache_dir: str | None = None,
             on_bad_record: str = "error") -> tuple[DatasetDraws, list[int]]:
    """The dataset's draws and the groups its samples use (after `samples` / `weight`)."""
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise DataError(f"dataset {spec.get('format')!r}: unknown key(s) {sorted(unknown)}; known: {sorted(SPEC_KEYS)}")
    name = spec.get("format", "native")
    path = spec_path(spec, data_path)
    reader = get_reader(name, path)
    image_dir = Path(spec["image_dir"]).expanduser() if spec.get("image_dir") else None
    snapshot = snapshot_path(cache_dir, spec, path, max_images) if cache_dir else None
    loaded = load_snapshot(snapshot, reader) if snapshot and snapshot.is_file() else None
    if loaded is None:
        loaded = reader(path, rng, max_images, image_dir)
        if snapshot:
            save_snapshot(snapshot, reader, loaded)
    built.annotation_files += loaded.annotation_files
    for rule, count in loaded.dropped.items():
        built.dropped[rule] = built.dropped.get(rule, 0) + count
    conversations, skipped = check_image_files(loaded.conversations, on_missing_image, verify_images)
    built.skipped_missing_image += skipped
    if skipped:
        log.warning("dataset %s (%s): skipped %d sample(s) with a missing image (data.on_missing_image=skip)", name, path, skipped)
    conversations, bad = check_record_texts(conversations, on_bad_record, f"{name} ({path})")
    if bad:
        built.dropped[STRAY_PLACEHOLDER] = built.dropped.get(STRAY_PLACEHOLDER, 0) + bad
    if not conversations:
        dropped = ", ".join(f"{count} dropped by the rule {rule!r}" for rule, count in loaded.dropped.items())
        raise DataError(f"dataset {name} ({path}): no samples left after filtering ({len(loaded.conversations)} read, "
                        f"{skipped} skipped for missing images{', ' + dropped if dropped else ''}); check the files and the filters")
    counts = [c.num_images for c in conversations]
    check_images_per_sample(conversations, max_images, counts)
    if skipped or bad:
        kept_ids = {id(c) for c in conversations}
        kept = [i for i, c in enumerate(loaded.conversations) if id(c) in kept_ids]
    else:
        kept = list(range(len(conversations)))
    concatenate = int(spec.get("concatenate") or 1)
    groups = concatenation_groups(counts, concatenate, max_images, rng)
    chosen = subsample(list(range(len(groups))), spec.get("samples", "all"), spec.get("weight"), rng, name)
    log.info("dataset %s (%s): %d sample(s)", name, path, len(chosen))
    return DatasetDraws(name, conversations, kept, groups, loaded.redraw, concatenate), chosen


def files_key(specs: list, paths: list[Path], settings: dict) -> str:
    """A cheap key of what decides the conversations: every annotation file's size and mtime,
    the specs and settings. It names caches of derived values (lengths); it is no fingerprint."""
    stamps = []
    for path in sorted(set(map(str, paths))):
        stat = os.stat(path)
        stamps.append([path, stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps([specs, stamps, settings], sort_keys=True, default=str).encode()).hexdigest()


def build_conversations(
    synthetic: dict | None,
    train: list[dict],
    eval: list[dict],
    data_path: str | None = None,
    eval_split: float = 0.0,
    max_images_per_sample: int = 8,
    on_missing_image: str = "error",
    verify_images="header",
    seed: int = 0,
    cache_dir: str | None = None,
    on_bad_record: str = "error",
) -> BuiltData:
    """`cache_dir`: where parsed datasets are kept between runs (see snapshot.py); None: off.
    `on_bad_record`: error | skip a record with a stray `<image>` (record_checks.py)."""
    with gc_paused():
        return build(synthetic, train, eval, data_path, eval_split, max_images_per_sample, on_missing_image, verify_images,
                     seed, cache_dir, on_bad_record)


def build(synthetic, train, eval, data_path, eval_split, max_images_per_sample, on_missing_image, verify_images, seed,
          cache_dir, on_bad_record="error") -> BuiltData:
    train_specs, eval_specs = list(train), list(eval)
    if synthetic is not None:
        root = ensure_shapes_dataset(**synthetic)
        train_specs.insert(0, {"format": "native", "path": str(root / "train.jsonl")})
        eval_specs.insert(0, {"format": "native", "path": str(root / "eval.jsonl")})
    if not train_specs:
        raise DataError("no training data: set data.synthetic or list datasets under data.train")
    built = BuiltData([], [])

    def read_all(specs: list[dict], role: str) -> tuple[list[DatasetDraws], list[tuple[int, int]]]:
        draws, refs = [], []
        for index, spec in enumerate(specs):
            # One generator per dataset: adding a dataset never changes another's draws.
            rng = random.Random(f"{seed}/{role}/{index}/{spec.get('format')}")
            dataset, chosen = read_one(dict(spec), data_path, max_images_per_sample, on_missing_image, verify_images, rng, built,
                                       cache_dir, on_bad_record)
            draws.append(dataset)
            refs += [(index, group) for group in chosen]
        return draws, refs

    built.draws, blend = read_all(train_specs, "train")
    built.train_refs, held_out = split_train_eval(blend, eval_split, random.Random(f"{seed}/split"))
    built.train = [built.draws[d].sample(g) for d, g in built.train_refs]
    eval_draws, eval_refs = read_all(eval_specs, "eval")
    built.eval = [built.draws[d].sample(g) for d, g in held_out] + [eval_draws[d].sample(g) for d, g in eval_refs]
    settings = {"seed": seed, "eval_split": eval_split, "max_images": max_images_per_sample, "on_missing_image": on_missing_image}
    if on_bad_record != "error":  # only then: the key (and the caches it names) of existing runs stays the same
        settings["on_bad_record"] = on_bad_record
    built.key = files_key([train_specs, eval_specs], built.annotation_files, settings)
    return built

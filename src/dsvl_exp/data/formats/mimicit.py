"""MIMIC-IT (Otter) reference datasets: `otter_mimicit_cgd|sd|sn|tvc|vst`.

Layout under the data root, MIMIC-IT/:
    {X}_instructions.json  {"data": {id: {instruction, answer, image_ids, rel_ins_ids}}}
    {X}.json               {image_id: base64 image}   (SD, SN, TVC, VST; CGD uses COCO train2017,
                                                       file = image id minus its 8-char prefix + .jpg)

One-time preprocessing merges each instruction with its related ones (`rel_ins_ids`) into one
multi-round sample, in a seeded shuffled key order, and caches the result next to the raw file
(`CGD_instructions_merged.json`, `SD_instructions_merged.json`,
`{SN,TVC,VST}_instructions_merged_filtered{N}.json`, the latter keeping samples with 1..N images;
what the rule drops is counted and logged). An image id missing from `{X}.json` follows
`data.on_missing_image`; errors name the raw file and the instruction id.

Per sample the round order is shuffled; the first round shows every image and later rounds none.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from dsvl_exp.data.cache import cached_json_with_notes
from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.formats.common import coco_train2017, field, load_annotations, nonempty_answer, require_file
from dsvl_exp.data.formats.common import strip_image_tag
from dsvl_exp.data.formats.registry import LoadedDataset, drawn, register
from dsvl_exp.data.images import missing_image

log = logging.getLogger(__name__)
MIMICIT_URL = "https://huggingface.co/datasets/pufanyi/MIMICIT"
MERGE_SEED = 0  # fixed: every rank must compute the same cache file


def merge_related(raw: dict, shuffle: random.Random | None, max_images: int | None = None,
                  dropped: dict[str, int] | None = None, where: str = "MIMIC-IT") -> list[dict]:
    """Group each instruction with its `rel_ins_ids`; each id is used once. A group without images
    or with more than `max_images` is dropped (the reference's rule) and counted in `dropped`."""
    dropped = {} if dropped is None else dropped
    remaining = dict(raw)
    keys = list(remaining)
    if shuffle is not None:
        shuffle.shuffle(keys)
    merged = []
    for key in keys:
        if key not in remaining:
            continue
        record = remaining.pop(key)
        image_ids = list(field(record, "image_ids", f"{where} [{key}]"))
        if not image_ids or (max_images is not None and len(image_ids) > max_images):
            rule = "without_images" if not image_ids else "over_image_limit"
            dropped[rule] = dropped.get(rule, 0) + 1
            continue
        sample = {"id": key, "image_ids": image_ids, "instruction": [field(record, "instruction", f"{where} [{key}]")],
                  "answer": [field(record, "answer", f"{where} [{key}]")]}
        for related in record.get("rel_ins_ids", []):
            if related in remaining:
                other = remaining.pop(related)
                sample["instruction"].append(field(other, "instruction", f"{where} [{related}]"))
                sample["answer"].append(field(other, "answer", f"{where} [{related}]"))
        merged.append(sample)
    return merged


def merged_instructions(raw_path: Path, merged_path: Path, name: str, max_images: int | None) -> tuple[list[dict], dict]:
    def build():
        dropped: dict[str, int] = {}
        merged = merge_related(load_annotations(raw_path, name, "data"), random.Random(MERGE_SEED), max_images, dropped, str(raw_path))
        return merged, dropped

    merged, dropped = cached_json_with_notes(merged_path, build, name, sources=(raw_path,))
    for rule, count in dropped.items():
        log.warning("%s (%s): dropped %d instruction group(s) %s (the reference's rule)", name, raw_path, count,
                    "without images" if rule == "without_images" else f"with more than {max_images} images")
    return merged, dropped


def shuffled_rounds(sample: dict, num_images: int, rng: random.Random, where: str) -> tuple[Round, ...]:
    questions, answers = sample["instruction"], sample["answer"]
    order = list(range(len(questions)))
    rng.shuffle(order)
    return tuple(
        Round(strip_image_tag(questions[k]), nonempty_answer(answers[k], f"{where}.answer[{k}]"), num_images if n == 0 else 0)
        for n, k in enumerate(order)
    )


def read_coco_subset(root: Path, rng: random.Random, image_dir: Path | None) -> LoadedDataset:
    images = coco_train2017(root, image_dir, "otter_mimicit_cgd")
    raw_path = require_file(root / "MIMIC-IT/CGD_instructions.json", "otter_mimicit_cgd", MIMICIT_URL)
    merged, dropped = merged_instructions(raw_path, root / "MIMIC-IT/CGD_instructions_merged.json", "otter_mimicit_cgd", None)
    samples = [(sample, f"{raw_path} [{sample['id']}]",
                tuple(str(images / (image_id[8:] + ".jpg")) for image_id in sample["image_ids"])) for sample in merged]

    def draw(rng: random.Random) -> list[Conversation]:
        return [Conversation(id=f"otter_mimicit_cgd:{sample['id']}", images=paths,
                             rounds=shuffled_rounds(sample, len(paths), rng, where), source=where)
                for sample, where, paths in samples]

    return drawn(draw, rng, (raw_path,), dropped)


def read_base64_subset(root: Path, subset: str, rng: random.Random, max_images: int | None) -> LoadedDataset:
    name = f"otter_mimicit_{subset.lower()}"
    images_path = require_file(root / f"MIMIC-IT/{subset}.json", name, MIMICIT_URL)
    raw_path = require_file(root / f"MIMIC-IT/{subset}_instructions.json", name, MIMICIT_URL)
    suffix = "" if max_images is None else f"_filtered{max_images}"
    merged, dropped = merged_instructions(raw_path, root / f"MIMIC-IT/{subset}_instructions_merged{suffix}.json", name, max_images)
    image_data = load_annotations(images_path, name)
    # One `base64:` string per image, shared by every sample that shows it; the raw table is dropped.
    # An unknown image id becomes a `missing:` entry, so it follows data.on_missing_image.
    entries: dict[str, str] = {}
    samples = []
    for sample in merged:
        where = f"{raw_path} [{sample['id']}]"
        shown = []
        for image_id in sample["image_ids"]:
            if image_id not in entries and image_id in image_data:
                entries[image_id] = "base64:" + image_data[image_id]
            shown.append(entries.get(image_id) or missing_image(f"image id {image_id!r} of {sample['id']} is not in {images_path}"))
        names = tuple(f"image id {image_id!r} in {images_path}" for image_id in sample["image_ids"])
        samples.append((sample, where, tuple(shown), names))
    del image_data

    def draw(rng: random.Random) -> list[Conversation]:
        return [Conversation(id=f"{name}:{sample['id']}", images=shown, rounds=shuffled_rounds(sample, len(shown), rng, where),
                             source=where, meta={"image_names": names})
                for sample, where, shown, names in samples]

    return drawn(draw, rng, (raw_path, images_path), dropped)


@register("otter_mimicit_cgd")
def read_cgd(root: Path, rng: random.Random, max_images: int, image_dir: Path | None) -> LoadedDataset:
    return read_coco_subset(root, rng, image_dir)


@register("otter_mimicit_sd")
def read_sd(root: Path, rng: random.Random, max_images: int, image_dir: Path | None) -> LoadedDataset:
    return read_base64_subset(root, "SD", rng, None)


@register("otter_mimicit_sn")
def read_sn(root: Path, rng: random.Random, max_images: int, image_dir: Path | None) -> LoadedDataset:
    return read_base64_subset(root, "SN", rng, max_images)


@register("otter_mimicit_tvc")
def read_tvc(root: Path, rng: random.Random, max_images: int, image_dir: Path | None) -> LoadedDataset:
    return read_base64_subset(root, "TVC", rng, max_images)


@register("otter_mimicit_vst")
def read_vst(root: Path, rng: random.Random, max_images: int, image_dir: Path | None) -> LoadedDataset:
    return read_base64_subset(root, "VST", rng, max_images)

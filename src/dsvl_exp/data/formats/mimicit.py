"""MIMIC-IT (Otter) reference datasets: `otter_mimicit_cgd|sd|sn|tvc|vst`.

Layout under the data root, MIMIC-IT/:
    {X}_instructions.json  {"data": {id: {instruction, answer, image_ids, rel_ins_ids}}}
    {X}.json               {image_id: base64 image}   (SD, SN, TVC, VST; CGD uses COCO train2017,
                                                       file = image id minus its 8-char prefix + .jpg)

One-time preprocessing merges each instruction with its related ones (`rel_ins_ids`) into one
multi-round sample, in a seeded shuffled key order, and caches the result next to the raw file
(`CGD_instructions_merged.json`, `SD_instructions_merged.json`,
`{SN,TVC,VST}_instructions_merged_filtered{N}.json`, the latter keeping samples with 1..N known images).

Per sample the round order is shuffled; the first round shows every image and later rounds none.
"""

from __future__ import annotations

import random
from pathlib import Path

from dsvl_exp.data.cache import cached_json
from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.formats.common import (
    coco_train2017,
    field,
    load_annotations,
    nonempty_answer,
    require_file,
    strip_image_tag,
)
from dsvl_exp.data.formats.registry import LoadedDataset, register

MIMICIT_URL = "https://huggingface.co/datasets/pufanyi/MIMICIT"
MERGE_SEED = 0  # fixed: every rank must compute the same cache file


def merge_related(raw: dict, shuffle: random.Random | None, keep_image=lambda image_id: True,
                  max_images: int | None = None) -> list[dict]:
    """Group each instruction with its `rel_ins_ids`; each id is used once."""
    remaining = dict(raw)
    keys = list(remaining)
    if shuffle is not None:
        shuffle.shuffle(keys)
    merged = []
    for key in keys:
        if key not in remaining:
            continue
        record = remaining.pop(key)
        image_ids = [i for i in record["image_ids"] if keep_image(i)]
        if not image_ids or (max_images is not None and len(image_ids) > max_images):
            continue
        sample = {"id": key, "image_ids": image_ids, "instruction": [record["instruction"]], "answer": [record["answer"]]}
        for related in record.get("rel_ins_ids", []):
            if related in remaining:
                other = remaining.pop(related)
                sample["instruction"].append(other["instruction"])
                sample["answer"].append(other["answer"])
        merged.append(sample)
    return merged


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
    merged_path = root / "MIMIC-IT/CGD_instructions_merged.json"
    merged = cached_json(
        merged_path, lambda: merge_related(load_annotations(raw_path, "otter_mimicit_cgd", "data"), random.Random(MERGE_SEED)),
        "otter_mimicit_cgd",
    )
    conversations = []
    for i, sample in enumerate(merged):
        where = f"{merged_path}[{i}]"
        paths = tuple(str(images / (image_id[8:] + ".jpg")) for image_id in field(sample, "image_ids", where))
        conversations.append(Conversation(
            id=f"otter_mimicit_cgd:{sample.get('id', i)}", images=paths,
            rounds=shuffled_rounds(sample, len(paths), rng, where), source=where,
        ))
    return LoadedDataset(conversations, (raw_path,))


def read_base64_subset(root: Path, subset: str, rng: random.Random, max_images: int | None) -> LoadedDataset:
    name = f"otter_mimicit_{subset.lower()}"
    images_path = require_file(root / f"MIMIC-IT/{subset}.json", name, MIMICIT_URL)
    raw_path = require_file(root / f"MIMIC-IT/{subset}_instructions.json", name, MIMICIT_URL)
    image_data = load_annotations(images_path, name)
    suffix = "" if max_images is None else f"_filtered{max_images}"
    merged_path = root / f"MIMIC-IT/{subset}_instructions_merged{suffix}.json"
    merged = cached_json(
        merged_path,
        lambda: merge_related(load_annotations(raw_path, name, "data"), random.Random(MERGE_SEED),
                              keep_image=(lambda i: i in image_data) if max_images else (lambda i: True), max_images=max_images),
        name,
    )
    # One `base64:` string per image, shared by every sample that shows it; the raw table is dropped.
    entries: dict[str, str] = {}
    conversations = []
    for i, sample in enumerate(merged):
        where = f"{merged_path}[{i}]"
        shown = []
        for image_id in field(sample, "image_ids", where):
            if image_id not in entries:
                if image_id not in image_data:
                    raise DataError(f"{where}: image id {image_id!r} is not in {images_path}")
                entries[image_id] = "base64:" + image_data[image_id]
            shown.append(entries[image_id])
        conversations.append(Conversation(
            id=f"{name}:{sample.get('id', i)}", images=tuple(shown),
            rounds=shuffled_rounds(sample, len(shown), rng, where), source=where,
        ))
    del image_data
    return LoadedDataset(conversations, (raw_path, images_path))


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

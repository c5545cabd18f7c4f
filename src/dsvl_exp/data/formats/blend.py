"""`llava_otter_blend`: LLaVA conversations about the COCO images of a MIMIC-IT CGD sample,
then some of that sample's CGD rounds comparing the images.

One-time files at the data root:
    LlavaOtterBlendDataset_instructions_llava.json  image filename -> its llava conversations
                                                    (detail_23k, complex_reasoning_77k, conversation_58k)
    LlavaOtterBlendDataset_instructions_otter.json  merged CGD samples whose every image but the last
                                                    has at least one llava conversation

Per sample: for each image in order, draw randint(1, n) of its llava conversations (the last
image may draw 0) and append all their turns; an image is shown on its first turn. Then draw
randint(1, n) CGD rounds; the first of them shows the images not yet shown.
"""

from __future__ import annotations

import random
from pathlib import Path

from dsvl_exp.data.cache import cached_json
from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.formats.common import coco_train2017, field, load_annotations, nonempty_answer, require_file
from dsvl_exp.data.formats.common import strip_image_tag
from dsvl_exp.data.formats.llava import LLAVA_URL, turn_pairs
from dsvl_exp.data.formats.mimicit import MIMICIT_URL, merge_related
from dsvl_exp.data.formats.registry import LoadedDataset, drawn, register

LLAVA_FILES = ("detail_23k.json", "complex_reasoning_77k.json", "conversation_58k.json")


def llava_by_image(paths: list[Path]) -> dict[str, list]:
    by_image: dict[str, list] = {}
    for path in paths:
        for i, record in enumerate(load_annotations(path, "llava_otter_blend")):
            where = f"{path}[{i}]"
            conversation = field(record, "conversations", where)
            turn_pairs(conversation, f"{where}.conversations")  # checked here: a sample draws only some of them
            by_image.setdefault(field(record, "image", where), []).append(conversation)
    return by_image


def cgd_with_llava(raw_path: Path, by_image: dict) -> list[dict]:
    raw = load_annotations(raw_path, "llava_otter_blend", "data")
    for record in raw.values():
        record["image_ids"] = [image_id[8:] + ".jpg" for image_id in record["image_ids"]]
    merged = merge_related(raw, shuffle=None)
    return [s for s in merged if all(image in by_image for image in s["image_ids"][:-1])]


def blend_rounds(sample: dict, by_image: dict, rng: random.Random, where: str) -> list[Round]:
    images = sample["image_ids"]
    rounds: list[Round] = []
    shown: set[str] = set()
    for index, image in enumerate(images):
        conversations = by_image.get(image, [])
        if not conversations:
            continue
        draw = rng.randint(1 if index < len(images) - 1 else 0, len(conversations))
        for chosen in rng.sample(range(len(conversations)), draw):
            for question, answer in turn_pairs(conversations[chosen], f"{where}: llava conversation of {image}"):
                rounds.append(Round(strip_image_tag(question), answer, int(image not in shown)))
                shown.add(image)
    questions, answers = sample["instruction"], sample["answer"]
    for n, k in enumerate(rng.sample(range(len(questions)), rng.randint(1, len(questions)))):
        unseen = len(images) - len(shown) if n == 0 else 0
        rounds.append(Round(strip_image_tag(questions[k]), nonempty_answer(answers[k], f"{where}.answer[{k}]"), unseen))
    return rounds


@register("llava_otter_blend")
def read_blend(root: Path, rng: random.Random, max_images: int, image_dir: Path | None) -> LoadedDataset:
    images = coco_train2017(root, image_dir, "llava_otter_blend")
    llava_paths = [require_file(root / "llava" / n, "llava_otter_blend", LLAVA_URL) for n in LLAVA_FILES]
    raw_path = require_file(root / "MIMIC-IT/CGD_instructions.json", "llava_otter_blend", MIMICIT_URL)
    by_image = cached_json(root / "LlavaOtterBlendDataset_instructions_llava.json", lambda: llava_by_image(llava_paths),
                           "llava_otter_blend", sources=llava_paths)
    otter_path = root / "LlavaOtterBlendDataset_instructions_otter.json"
    samples = cached_json(otter_path, lambda: cgd_with_llava(raw_path, by_image), "llava_otter_blend", sources=(*llava_paths, raw_path))
    prepared = []
    for i, sample in enumerate(samples):
        where = f"{raw_path} [{sample.get('id', i)}]"
        image_ids = field(sample, "image_ids", where)
        prepared.append((sample, where, f"llava_otter_blend:{sample.get('id', i)}", tuple(str(images / n) for n in image_ids)))

    def draw(rng: random.Random) -> list[Conversation]:
        return [Conversation(id=conv_id, images=paths, rounds=tuple(blend_rounds(sample, by_image, rng, where)), source=where)
                for sample, where, conv_id, paths in prepared]

    return drawn(draw, rng, (*llava_paths, raw_path))

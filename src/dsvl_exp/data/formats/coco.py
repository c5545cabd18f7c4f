"""Single-image reference datasets: `aokvqa`, `coco_caption`, `minigpt4`.

Layouts under the data root:
    aokvqa        coco/train2017/{image_id:012d}.jpg, aokvqa/annotations/aokvqa_v1p0_train.json
    coco_caption  coco/2014/{filename}, coco_caption/dataset.json (Karpathy split, key "images")
    minigpt4      cc_sbu_align/image/{image_id}.jpg, cc_sbu_align/filter_cap.json (key "annotations")
"""

from __future__ import annotations

import random
from pathlib import Path

from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.formats.common import (
    COCO_URL,
    coco_train2017,
    field,
    load_annotations,
    nonempty_answer,
    require_dir,
    require_file,
)
from dsvl_exp.data.formats.prompts import CAPTION_QUESTIONS, REASON_QUESTIONS
from dsvl_exp.data.formats.registry import LoadedDataset, drawn, register


def single_image_conversation(conv_id: str, image: Path, question: str, answer: str, source: str) -> Conversation:
    return Conversation(id=conv_id, images=(str(image),), rounds=(Round(question, answer, 1),), source=source)


def aokvqa_conversation(record: dict, image_dir: Path, rng: random.Random, where: str) -> Conversation:
    """Question + a random "why" prompt; the answer gives the correct choice and the rationales."""
    choices = field(record, "choices", where)
    choice = choices[field(record, "correct_choice_idx", where)]
    rationales = " ".join(field(record, "rationales", where))
    question = field(record, "question", where) + " " + rng.choice(REASON_QUESTIONS)
    answer = nonempty_answer(f"The answer is {choice}. Because {rationales}", where)
    image = image_dir / f"{int(field(record, 'image_id', where)):012d}.jpg"
    return single_image_conversation(f"aokvqa:{record.get('question_id', where)}", image, question, answer, where)


@register("aokvqa")
def read_aokvqa(root: Path, rng: random.Random, max_images: int, image_dir: Path | None) -> LoadedDataset:
    images = coco_train2017(root, image_dir, "aokvqa")
    path = require_file(root / "aokvqa/annotations/aokvqa_v1p0_train.json", "aokvqa", "https://allenai.org/project/a-okvqa/home")
    records = load_annotations(path, "aokvqa")
    return drawn(lambda rng: [aokvqa_conversation(r, images, rng, f"{path}[{i}]") for i, r in enumerate(records)], rng, (path,))


def caption_conversation(conv_id: str, image: Path, caption: str, rng: random.Random, where: str) -> Conversation:
    question = rng.choice(CAPTION_QUESTIONS)
    return single_image_conversation(conv_id, image, question, nonempty_answer(caption, where), where)


@register("coco_caption")
def read_coco_caption(root: Path, rng: random.Random, max_images: int, image_dir: Path | None) -> LoadedDataset:
    images = require_dir(Path(image_dir or root / "coco/2014"), "coco_caption", COCO_URL)
    path = require_file(root / "coco_caption/dataset.json", "coco_caption", "https://cs.stanford.edu/people/karpathy/deepimagesent/coco.zip")
    records = []
    for i, record in enumerate(load_annotations(path, "coco_caption", key="images")):
        where = f"{path}[images][{i}]"
        sentences = field(record, "sentences", where)
        sentences = sentences if isinstance(sentences, list) else [sentences]
        if not sentences:
            raise DataError(f"{where}: no captions in 'sentences'")
        captions = [field(sentence, "raw", f"{where}.sentences[{k}]") for k, sentence in enumerate(sentences)]
        records.append((f"coco_caption:{record.get('imgid', i)}", images / field(record, "filename", where), captions, where))

    def draw(rng: random.Random) -> list[Conversation]:
        return [caption_conversation(conv_id, image, rng.choice(captions), rng, where) for conv_id, image, captions, where in records]

    return drawn(draw, rng, (path,))


@register("minigpt4")
def read_minigpt4(root: Path, rng: random.Random, max_images: int, image_dir: Path | None) -> LoadedDataset:
    source = "https://huggingface.co/datasets/Vision-CAIR/cc_sbu_align"
    images = require_dir(Path(image_dir or root / "cc_sbu_align/image"), "minigpt4", source)
    path = require_file(root / "cc_sbu_align/filter_cap.json", "minigpt4", source)
    records = []
    for i, record in enumerate(load_annotations(path, "minigpt4", key="annotations")):
        where = f"{path}[annotations][{i}]"
        image_id = str(field(record, "image_id", where))
        records.append((f"minigpt4:{image_id}", images / f"{image_id}.jpg", field(record, "caption", where), where))

    def draw(rng: random.Random) -> list[Conversation]:
        return [caption_conversation(conv_id, image, caption, rng, where) for conv_id, image, caption, where in records]

    return drawn(draw, rng, (path,))

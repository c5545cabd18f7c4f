"""`ocr_vqa`: OCR_VQA/images/{key}{ext} and OCR_VQA/dataset.json ({key: {imageURL, questions, answers}}).

One-time preprocessing writes OCR_VQA/dataset_processed.json: the records whose image is larger
than 1x1 px (the download leaves 1-px placeholders for dead links), each with its `filename`.
Each item is one random question/answer of its image.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from PIL import Image

from dsvl_exp.data.cache import cached_json
from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.formats.common import field, load_annotations, nonempty_answer, require_dir, require_file
from dsvl_exp.data.formats.registry import LoadedDataset, register

OCR_VQA_URL = "https://ocr-vqa.github.io/"


def image_is_real(path: Path) -> bool:
    """False for a missing/unreadable file or a degenerate <= 1-px placeholder (header read only)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError):
        return False
    return width > 1 and height > 1


def preprocess(raw_path: Path, image_dir: Path) -> list[dict]:
    kept = []
    for key, record in load_annotations(raw_path, "ocr_vqa").items():
        filename = key + os.path.splitext(field(record, "imageURL", f"{raw_path}[{key}]"))[1]
        if image_is_real(image_dir / filename):
            kept.append({**record, "filename": filename, "key": key})
    return kept


@register("ocr_vqa")
def read_ocr_vqa(root: Path, rng: random.Random, max_images: int, image_dir: Path | None) -> LoadedDataset:
    images = require_dir(Path(image_dir or root / "OCR_VQA/images"), "ocr_vqa", OCR_VQA_URL)
    raw_path = require_file(root / "OCR_VQA/dataset.json", "ocr_vqa", OCR_VQA_URL)
    processed_path = root / "OCR_VQA/dataset_processed.json"
    records = cached_json(processed_path, lambda: preprocess(raw_path, images), "ocr_vqa")
    conversations = []
    for i, record in enumerate(records):
        where = f"{processed_path}[{i}]"
        questions, answers = field(record, "questions", where), field(record, "answers", where)
        if not questions or len(questions) != len(answers):
            raise DataError(f"{where}: 'questions' and 'answers' must be non-empty lists of the same length")
        k = rng.randrange(len(questions))
        conversations.append(Conversation(
            id=f"ocr_vqa:{record.get('key', i)}",
            images=(str(images / field(record, "filename", where)),),
            rounds=(Round(questions[k], nonempty_answer(answers[k], where), 1),),
            source=where,
        ))
    return LoadedDataset(conversations, (raw_path,))

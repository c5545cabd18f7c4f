"""`ocr_vqa`: OCR_VQA/images/{key}{ext} and OCR_VQA/dataset.json ({key: {imageURL, questions, answers}}).

One-time preprocessing writes OCR_VQA/dataset_processed.json: every record with its `filename`,
except those whose image is a degenerate <= 1x1 px placeholder (the download leaves them for
dead links; the reference's rule), which are dropped, counted and logged. A missing image
follows `data.on_missing_image` and a corrupt one is an error, like every other reader's; a
record whose questions and answers differ in number is an error naming its key.
Each item is one random question/answer of its image.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

from PIL import Image

from dsvl_exp.data.cache import cached_json_with_notes
from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.formats.common import field, load_annotations, nonempty_answer, require_dir, require_file
from dsvl_exp.data.formats.registry import LoadedDataset, drawn, register

log = logging.getLogger(__name__)
OCR_VQA_URL = "https://ocr-vqa.github.io/"


def is_placeholder(path: Path) -> bool:
    """True for a readable image of at most 1 px per side (header read only). A missing or
    unreadable file is not a placeholder: the image checks report it."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError):
        return False
    return width <= 1 or height <= 1


def preprocess(raw_path: Path, image_dir: Path) -> tuple[list[dict], dict]:
    kept, placeholders = [], 0
    for key, record in load_annotations(raw_path, "ocr_vqa").items():
        where = f"{raw_path} [{key}]"
        questions, answers = field(record, "questions", where), field(record, "answers", where)
        if not isinstance(questions, list) or not isinstance(answers, list) or not questions or len(questions) != len(answers):
            raise DataError(f"{where}: 'questions' and 'answers' must be non-empty lists of the same length "
                            f"(got {len(questions) if isinstance(questions, list) else questions!r} and "
                            f"{len(answers) if isinstance(answers, list) else answers!r}); fix or remove the record")
        filename = key + os.path.splitext(field(record, "imageURL", where))[1]
        if is_placeholder(image_dir / filename):
            placeholders += 1
            continue
        kept.append({**record, "filename": filename, "key": key})
    return kept, {"placeholder_images": placeholders} if placeholders else {}


@register("ocr_vqa")
def read_ocr_vqa(root: Path, rng: random.Random, max_images: int, image_dir: Path | None) -> LoadedDataset:
    images = require_dir(Path(image_dir or root / "OCR_VQA/images"), "ocr_vqa", OCR_VQA_URL)
    raw_path = require_file(root / "OCR_VQA/dataset.json", "ocr_vqa", OCR_VQA_URL)
    records, dropped = cached_json_with_notes(root / "OCR_VQA/dataset_processed.json", lambda: preprocess(raw_path, images),
                                              "ocr_vqa", sources=(raw_path, images))
    if dropped:
        log.warning("ocr_vqa (%s): dropped %d record(s) whose image is a <= 1x1 px placeholder (the reference's rule)",
                    raw_path, dropped["placeholder_images"])
    prepared = [(f"ocr_vqa:{r['key']}", str(images / r["filename"]), r["questions"], r["answers"], f"{raw_path} [{r['key']}]")
                for r in records]

    def draw(rng: random.Random) -> list[Conversation]:
        conversations = []
        for conv_id, image, questions, answers, where in prepared:
            k = rng.randrange(len(questions))
            conversations.append(Conversation(id=conv_id, images=(image,),
                                              rounds=(Round(questions[k], nonempty_answer(answers[k], f"{where}.answers[{k}]"), 1),),
                                              source=where))
        return conversations

    return drawn(draw, rng, (raw_path,), dropped)

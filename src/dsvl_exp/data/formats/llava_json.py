"""LLaVA-style JSON: a list of

    {"id": "x", "image": "a.jpg" | ["a.jpg", "b.jpg"],
     "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"},
                       {"from": "gpt", "value": "A cat."}, ...]}

Turns alternate human/gpt. Each `<image>` in a human turn shows the next image of `image` in
that round; their number must match the images. Images are relative to `image_dir` when set,
else to the JSON file's folder. A record without `image` is a text-only conversation.
The file is either a JSON list or JSONL (one record per line), told apart by its first character.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from dsvl_exp.data.cache import TOO_DEEP, json_error, load_json
from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.formats.common import nonempty_answer
from dsvl_exp.data.formats.native import check_placeholders, resolve_image, strip_image_tokens
from dsvl_exp.data.formats.registry import LoadedDataset, register


def parse_llava_record(record: dict, where: str, image_dir: Path) -> Conversation:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    images = record.get("image", [])
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise DataError(f"{where}: field 'image' must be a path or a list of paths")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns or len(turns) % 2:
        raise DataError(f"{where}: field 'conversations' must be a non-empty list of human/gpt turn pairs")
    rounds = []
    for k in range(0, len(turns), 2):
        human, gpt = turns[k], turns[k + 1]
        if not (isinstance(human, dict) and human.get("from") == "human" and isinstance(gpt, dict) and gpt.get("from") == "gpt"):
            raise DataError(f"{where}: conversations[{k}], [{k + 1}] must be from 'human' then 'gpt'")
        question, count = strip_image_tokens(str(human.get("value", "")))
        answer = nonempty_answer(gpt.get("value"), f"{where}: conversations[{k + 1}].value")
        rounds.append(Round(question, answer.strip(), count))
    check_placeholders(rounds, len(images), where, "the human turns", "image")
    return Conversation(
        id=str(record.get("id", where)), images=tuple(resolve_image(i, image_dir) for i in images),
        rounds=tuple(rounds), source=where,
    )


EXPECTED = "a JSON list of LLaVA records ('[{...}, ...]') or JSONL (one '{...}' record per line)"


def first_character(path: Path) -> str:
    with open(path, encoding="utf-8") as f:
        while True:
            block = f.read(4096)
            if not block:
                return ""
            stripped = block.lstrip()
            if stripped:
                return stripped[0]


def load_records(path: Path) -> list[tuple[str, object]]:
    """(where, record) for a JSON list or a JSONL file."""
    if not path.is_file():
        raise DataError(f"llava_json: file not found: {path}")
    first = first_character(path)
    if first == "[":
        return [(f"{path}[{i}]", r) for i, r in enumerate(load_json(path, "llava_json"))]
    if first != "{":
        raise DataError(f"{path}: starts with {first!r} but llava_json expects {EXPECTED}")
    records = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}:{line_number}", json.loads(line)))
            except json.JSONDecodeError as error:
                error.lineno = line_number
                raise DataError(json_error(path, error, "llava_json") + f"; expected {EXPECTED}") from None
            except RecursionError:
                raise DataError(f"{path}:{line_number}: {TOO_DEEP}; expected {EXPECTED}") from None
    return records


@register("llava_json")
def read_llava_json(path: Path, rng: random.Random, max_images: int, image_dir: Path | None) -> LoadedDataset:
    path = Path(path)
    base = Path(image_dir) if image_dir else path.parent
    conversations = [parse_llava_record(record, where, base) for where, record in load_records(path)]
    if not conversations:
        raise DataError(f"{path}: no conversations in the file")
    return LoadedDataset(conversations, (path,))

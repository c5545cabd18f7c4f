"""The project's native format: JSONL, one conversation per line.

    {"id": "c1", "images": ["img/a.png", "img/b.png"],
     "rounds": [{"question": "<image>\\n<image>\\nWhat differs?", "answer": "The colour."},
                {"question": "And the shape?", "answer": "Both are circles."}]}

Each `<image>` in a round's question shows the next image of `images` in that round's image
block; image paths are relative to the JSONL file (absolute paths and `base64:` data also
work). Rounds and whole conversations without images are allowed.
"""

from __future__ import annotations

import json
import random

import orjson
from pathlib import Path

from dsvl_exp.data.cache import json_problem
from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.formats.registry import LoadedDataset, register
from dsvl_exp.data.template import IMAGE_TOKEN

LONG_LINE_BYTES = 1 << 20


def strip_image_tokens(question: str) -> tuple[str, int]:
    count = question.count(IMAGE_TOKEN)
    text = question.replace(IMAGE_TOKEN + "\n", "").replace(IMAGE_TOKEN, "")
    return text.strip(), count


def check_placeholders(rounds: list[Round], num_images: int, where: str, texts: str, images_field: str) -> None:
    """Every `<image>` placeholder needs exactly one image, and every image a placeholder."""
    placeholders = sum(r.num_images for r in rounds)
    if placeholders != num_images:
        raise DataError(
            f"{where}: {placeholders} '{IMAGE_TOKEN}' placeholder(s) in {texts} but {num_images} image(s) "
            f"in '{images_field}'; they must match one to one"
        )


def resolve_image(entry: str, base_dir: Path) -> str:
    if entry.startswith("base64:"):
        return entry
    path = Path(entry)
    return str(path if path.is_absolute() else base_dir / path)


def parse_record(record: dict, where: str, base_dir: Path, resolved: dict[str, str] | None = None) -> Conversation:
    """`resolved` caches image paths already resolved: a large set shows the same image many times
    and pathlib costs ~10 us per path (half of the read time of a 1M-line file)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    rounds_raw = record.get("rounds")
    if not isinstance(rounds_raw, list) or not rounds_raw:
        raise DataError(f"{where}: field 'rounds' must be a non-empty list of {{question, answer}}")
    images_raw = record.get("images", [])
    if not isinstance(images_raw, list) or not all(isinstance(i, str) for i in images_raw):
        raise DataError(f"{where}: field 'images' must be a list of paths or base64: strings")
    rounds = []
    for k, item in enumerate(rounds_raw):
        if not isinstance(item, dict) or not isinstance(item.get("question"), str):
            raise DataError(f"{where}: rounds[{k}] needs a string 'question'")
        answer = item.get("answer")
        if not isinstance(answer, str) or not answer.strip():
            raise DataError(f"{where}: rounds[{k}].answer is empty or missing; every round needs an answer to train on")
        question, count = strip_image_tokens(item["question"])
        rounds.append(Round(question=question, answer=answer.strip(), num_images=count))
    check_placeholders(rounds, len(images_raw), where, "the questions", "images")
    conv_id = str(record.get("id", where))
    resolved = {} if resolved is None else resolved
    images = []
    for entry in images_raw:
        if entry not in resolved:
            resolved[entry] = resolve_image(entry, base_dir)
        images.append(resolved[entry])
    images = tuple(images)
    return Conversation(id=conv_id, images=images, rounds=tuple(rounds), source=str(where))


def line_error(line: bytes) -> json.JSONDecodeError | RecursionError:
    """The standard library's error for a line orjson rejected (its messages name the column)."""
    try:
        json.loads(line.decode("utf-8", errors="replace"))
    except (json.JSONDecodeError, RecursionError) as error:
        return error
    return json.JSONDecodeError("invalid UTF-8 or JSON", "", 0)


def parse_long_line(holder: list[bytes], where: str):
    """A line of LONG_LINE_BYTES or more, handed over in a one-element list so its bytes are freed
    once decoded: orjson reserves ~12x a line's size while parsing it (measured 667 MB for a 50 MB
    line), and holding bytes, text and record at once would be 3x; this way at most 2x."""
    line = holder.pop()
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{where}: {json_problem(line_error(line))}; fix or remove the line") from None
    del line
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise DataError(f"{where}: {json_problem(error)}; fix or remove the line") from None


def read_native_jsonl(path: str | Path, image_dir: Path | None = None) -> list[Conversation]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    conversations, resolved, base_dir, name = [], {}, image_dir or path.parent, str(path)
    with open(path, "rb") as f:
        line_number = 0
        for line in f:  # not enumerate(): its reused result tuple would keep a huge line alive
            line_number += 1
            if line.isspace():  # not line.strip(): that copies a huge line once more
                continue
            where = f"{name}:{line_number}"
            if len(line) >= LONG_LINE_BYTES:
                holder, line = [line], None
                record = parse_long_line(holder, where)
            else:
                try:
                    record = orjson.loads(line)  # ~2x faster than json: a large index is mostly parse time
                except orjson.JSONDecodeError:
                    raise DataError(f"{where}: {json_problem(line_error(line))}; fix or remove the line") from None
            conversations.append(parse_record(record, where, base_dir, resolved))
    if not conversations:
        raise DataError(f"{path}: no conversations in the file")
    return conversations


@register("native")
def read_native(path: Path, rng: random.Random, max_images: int, image_dir: Path | None) -> LoadedDataset:
    path = Path(path)
    conversations = read_native_jsonl(path, Path(image_dir) if image_dir else None)
    return LoadedDataset(conversations, (path,))

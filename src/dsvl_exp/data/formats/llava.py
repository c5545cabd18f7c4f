"""LLaVA-Instruct reference datasets on COCO train2017: `llava` and `llava_dial`.

    llava       llava/detail_23k.json + llava/complex_reasoning_77k.json: the first human/gpt turn
    llava_dial  llava/conversation_58k.json: every turn
Questions lose `<image>` and newlines, as in the reference.
"""

from __future__ import annotations

import random
from pathlib import Path

from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.formats.common import coco_train2017, field, load_annotations, nonempty_answer, require_file
from dsvl_exp.data.formats.common import strip_image_tag
from dsvl_exp.data.formats.registry import LoadedDataset, register

LLAVA_URL = "https://huggingface.co/datasets/liuhaotian/LLaVA-Instruct-150K"


def turn_pairs(turns: list, where: str) -> list[tuple[str, str]]:
    """(question, answer) pairs of a human/gpt alternation (raw text). A turn out of order (a record
    starting with `gpt`) or a trailing unanswered turn is an error, never trained on or dropped."""
    if not isinstance(turns, list) or len(turns) < 2:
        raise DataError(f"{where}: 'conversations' needs at least one human/gpt pair")
    for k, turn in enumerate(turns):
        expected = "human" if k % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != expected:
            got = turn.get("from") if isinstance(turn, dict) else type(turn).__name__
            raise DataError(f"{where}[{k}]: turn {k} is from {got!r}, expected {expected!r}; turns must alternate "
                            "human, gpt, human, gpt, ... starting with human")
    if len(turns) % 2:
        raise DataError(f"{where}[{len(turns) - 1}]: the last human turn has no gpt answer; add the answer or remove the turn")
    pairs = []
    for k in range(len(turns) // 2):
        question, answer = turns[2 * k], turns[2 * k + 1]
        pairs.append((field(question, "value", f"{where}[{2 * k}]"), nonempty_answer(answer.get("value"), f"{where}[{2 * k + 1}]")))
    return pairs


def dialogue_rounds(pairs: list[tuple[str, str]]) -> tuple[Round, ...]:
    """The image goes on the turn whose question holds `<image>` (the first turn if none does)."""
    image_turn = next((k for k, (q, _) in enumerate(pairs) if "<image>" in q), 0)
    return tuple(Round(strip_image_tag(q), a, int(k == image_turn)) for k, (q, a) in enumerate(pairs))


def read_llava_files(paths: list[Path], image_dir: Path, first_turn_only: bool, name: str) -> list[Conversation]:
    conversations = []
    for path in paths:
        for i, record in enumerate(load_annotations(path, name)):
            where = f"{path}[{i}]"
            pairs = turn_pairs(field(record, "conversations", where), f"{where}.conversations")
            if first_turn_only:
                pairs = pairs[:1]
            image = image_dir / field(record, "image", where)
            conversations.append(Conversation(
                id=f"{name}:{record.get('id', i)}", images=(str(image),), rounds=dialogue_rounds(pairs), source=where,
            ))
    return conversations


@register("llava")
def read_llava(root: Path, rng: random.Random, max_images: int, image_dir: Path | None) -> LoadedDataset:
    images = coco_train2017(root, image_dir, "llava")
    paths = [require_file(root / f"llava/{n}", "llava", LLAVA_URL) for n in ("detail_23k.json", "complex_reasoning_77k.json")]
    return LoadedDataset(read_llava_files(paths, images, True, "llava"), tuple(paths))


@register("llava_dial")
def read_llava_dial(root: Path, rng: random.Random, max_images: int, image_dir: Path | None) -> LoadedDataset:
    images = coco_train2017(root, image_dir, "llava_dial")
    path = require_file(root / "llava/conversation_58k.json", "llava_dial", LLAVA_URL)
    return LoadedDataset(read_llava_files([path], images, False, "llava_dial"), (path,))

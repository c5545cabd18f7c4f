"""From the `data` config to train / eval conversations, checked before training starts."""

from __future__ import annotations

from pathlib import Path

from dsvl_exp.data.conversation import Conversation
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.formats.native import read_native_jsonl
from dsvl_exp.data.synthetic import ensure_shapes_dataset

READERS = {"native": read_native_jsonl}


def read_dataset(format: str, path: str) -> list[Conversation]:
    if format not in READERS:
        raise DataError(f"unknown data format {format!r} for {path}; known formats: {sorted(READERS)}")
    return READERS[format](path)


def check_images_exist(conversations: list[Conversation]) -> None:
    for conversation in conversations:
        for entry in conversation.images:
            if not entry.startswith("base64:") and not Path(entry).is_file():
                raise DataError(
                    f"{conversation.source or conversation.id}: image file not found: {entry}; "
                    "fix the path (relative paths are relative to the data file) or remove the sample"
                )


def build_conversations(synthetic: dict | None, train: list[dict], eval: list[dict]) -> tuple[list, list]:
    train_specs, eval_specs = list(train), list(eval)
    if synthetic is not None:
        root = ensure_shapes_dataset(**synthetic)
        train_specs.insert(0, {"format": "native", "path": str(root / "train.jsonl")})
        eval_specs.insert(0, {"format": "native", "path": str(root / "eval.jsonl")})
    if not train_specs:
        raise DataError("no training data: set data.synthetic or list files under data.train")
    train_conversations = [c for spec in train_specs for c in read_dataset(spec["format"], spec["path"])]
    eval_conversations = [c for spec in eval_specs for c in read_dataset(spec["format"], spec["path"])]
    check_images_exist(train_conversations)
    check_images_exist(eval_conversations)
    return train_conversations, eval_conversations

"""Small helpers shared by the reference dataset readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsvl_exp.data.cache import load_json
from dsvl_exp.data.errors import DataError


COCO_URL = "https://cocodataset.org/#download"


def require_file(path: Path, dataset: str, source: str) -> Path:
    if not path.is_file():
        raise DataError(f"{dataset}: annotation file {path} not found; download it from {source} and place it there")
    return path


def require_dir(path: Path, dataset: str, source: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{dataset}: image directory {path} not found; download the images from {source} into it")
    return path


def coco_train2017(root: Path, image_dir: Path | None, dataset: str) -> Path:
    """The COCO train2017 images most reference datasets point into (or `image_dir` when set)."""
    return require_dir(Path(image_dir or root / "coco/train2017"), dataset, COCO_URL)


def load_annotations(path: Path, dataset: str, key: str | None = None) -> Any:
    value = load_json(path, dataset)
    if key is not None:
        if not isinstance(value, dict) or key not in value:
            raise DataError(f"{path}: expected a JSON object with key {key!r} ({dataset} layout)")
        value = value[key]
    return value


def field(record: dict, name: str, where: str) -> Any:
    if not isinstance(record, dict) or name not in record:
        raise DataError(f"{where}: missing field {name!r}")
    return record[name]


def strip_image_tag(text: str) -> str:
    """The reference's question clean-up: drop `<image>` and every newline."""
    return text.replace("<image>", "").replace("\n", "")


def nonempty_answer(answer: Any, where: str) -> str:
    if not isinstance(answer, str) or not answer.strip():
        raise DataError(f"{where}: empty or missing answer; every round needs an answer to train on")
    return answer

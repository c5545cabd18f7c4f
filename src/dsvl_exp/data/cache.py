"""One-time preprocessing results cached next to the data, written atomically.

Every rank may start at once and find the cache missing. Each then computes the same result
(preprocessing is deterministic: its randomness comes from a fixed seed) and moves its own
temporary file into place with `os.replace`, which is atomic: a reader sees either no file or a
complete one, and whichever rank wins writes identical content. No barrier is needed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsvl_exp.data.errors import DataError

log = logging.getLogger(__name__)


def write_json_atomic(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump(value, f)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{what}: file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}:{error.lineno}: malformed JSON ({error.msg} at column {error.colno}) in the {what} file; "
            "fix the file (or delete it if it is a cache so it is rebuilt)"
        ) from None


def cached_json(path: Path, build: Callable[[], Any], what: str) -> Any:
    """The JSON at `path`, computing it with `build()` and writing it there first if missing."""
    if path.is_file():
        return load_json(path, what)
    log.info("%s: one-time preprocessing into %s", what, path)
    value = build()
    write_json_atomic(path, value)
    return value

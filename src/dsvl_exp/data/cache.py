"""One-time preprocessing results cached next to the data, written atomically and keyed to
their sources.

Every rank may start at once and find the cache missing. Each then computes the same result
(preprocessing is deterministic: its randomness comes from a fixed seed) and moves its own
temporary file into place with `os.replace`, which is atomic: a reader sees either no file or a
complete one, and whichever rank wins writes identical content. No barrier is needed.

A cache keeps the reference's file name and content; beside it, `<name>.sources` records the
size and modification time of every raw file it was built from, plus counts of what the
preprocessing dropped (so a warm start still reports them). When a raw file changes, or the
record is missing (a cache written by the reference or an older version), the cache is rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dsvl_exp.data.errors import DataError
from dsvl_exp.files import TOO_DEEP, json_problem, write_atomically  # noqa: F401 (TOO_DEEP: the formats' name)

log = logging.getLogger(__name__)


def write_json_atomic(path: Path, value: Any) -> None:
    write_atomically(path, json.dumps(value))


def json_error(path: Path | str, error: json.JSONDecodeError, what: str) -> str:
    return f"{path}:{error.lineno}: {json_problem(error)} in the {what} file"


def load_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{what}: file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise DataError(json_error(path, error, what) + "; fix the file (or delete it if it is a cache so it is rebuilt)") from None
    except RecursionError:
        raise DataError(f"{path}: {TOO_DEEP} in the {what} file; fix the file") from None
    except IsADirectoryError:
        raise DataError(f"{what}: {path} is a directory, not a file") from None


def source_stamps(sources: Sequence[Path]) -> dict[str, list[int]]:
    stamps = {}
    for source in sources:
        stat = os.stat(source)
        stamps[str(source)] = [stat.st_size, stat.st_mtime_ns]
    return stamps


def sources_path(path: Path) -> Path:
    return path.with_name(path.name + ".sources")


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(sources_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cached_json_with_notes(path: Path, build: Callable[[], tuple[Any, dict]], what: str,
                           sources: Sequence[Path] = ()) -> tuple[Any, dict]:
    """(value, notes) from the cache at `path` when it was built from `sources` as they are now;
    else `build()` computes them and both files are written. `notes` holds small counts."""
    stamps = source_stamps(sources)
    record = read_record(path)
    if path.is_file() and record is not None and record.get("sources") == stamps:
        return load_json(path, what), record.get("notes", {})
    if path.is_file():
        log.info("%s: %s is stale or has no source record; rebuilding it from %s", what, path, ", ".join(stamps))
    else:
        log.info("%s: one-time preprocessing into %s", what, path)
    value, notes = build()
    write_json_atomic(path, value)
    write_json_atomic(sources_path(path), {"sources": stamps, "notes": notes})
    return value, notes


def cached_json(path: Path, build: Callable[[], Any], what: str, sources: Sequence[Path] = ()) -> Any:
    """The JSON at `path`, computing it with `build()` and writing it there first if missing or stale."""
    return cached_json_with_notes(path, lambda: (build(), {}), what, sources)[0]

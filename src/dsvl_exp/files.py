"""Writing a file so that no reader ever sees half of it, and reading JSON Lines with every bad
line named: the two file habits every layer shares (checkpoints, manifests, caches, metrics,
question files), kept here once, below all of them."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOO_DEEP = "JSON nested too deeply to read (brackets within brackets beyond the parser's recursion limit)"


def write_atomically(path: Path | str, content: str | bytes, fsync: bool = False) -> Path:
    """`path` holds `content` or its old content, never part of either: written to a temporary
    name beside it (unique, so concurrent writers never share one) and renamed into place.
    `fsync`: on disk before the rename, so a power cut cannot leave an empty file under the name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb" if isinstance(content, bytes) else "w",
                       **({} if isinstance(content, bytes) else {"encoding": "utf-8"})) as f:
            f.write(content)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)  # a failed write (a full disk) leaves no stray file
    return path


def publish_folder(target: Path, marker: str, fill: Callable[[Path], object]) -> Path:
    """`target`, filled once by `fill(folder)` in a temporary sibling and renamed into place, so a
    concurrent or interrupted process never sees half of it; `target / marker` existing says it is
    complete. A process that loses the race to another keeps the winner's folder (the same content:
    what goes in is decided by `target`'s name)."""
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fill(staging)
        try:
            os.replace(staging, target)
        except OSError:  # another process renamed its copy first
            if not (target / marker).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def replace_folder(target: Path, fill: Callable[[Path], object]) -> Path:
    """`target` rebuilt by `fill(folder)` in a sibling folder, then swapped in: a crash while filling
    leaves the old `target` whole. For one writer (rank 0); `publish_folder` is for racing ones."""
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    fill(partial)
    if target.exists():
        shutil.rmtree(target)
    os.replace(partial, target)
    return target


def json_problem(error: json.JSONDecodeError | RecursionError) -> str:
    """e.g. "malformed JSON (Unterminated string starting at column 7)": json's own messages
    often end in "at", so the column follows the message rather than repeating the word."""
    if isinstance(error, RecursionError):
        return TOO_DEEP
    return f"malformed JSON ({error.msg.removesuffix(' at')} at column {error.colno})"


def parsed_lines(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    """(`file:line`, value, None) for each non-blank line that is JSON, (`file:line`, None,
    problem) for each that is not."""
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line), None
        except (json.JSONDecodeError, RecursionError) as error:
            yield f"{path}:{number}", None, json_problem(error)


def jsonl_records(path: Path, error_type: type[Exception]) -> Iterator[tuple[str, Any]]:
    """(`file:line`, value) for each non-blank line; the first line that is not JSON raises
    `error_type` naming the line and what is wrong with it."""
    for where, value, problem in parsed_lines(path):
        if problem:
            raise error_type(f"{where}: {problem}; fix the line")
        yield where, value


@dataclass
class JsonlContent:
    """What a lenient read found: the values, and `file:line: problem` of every line it could not read."""

    values: list[Any] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)


def read_jsonl(path: Path) -> JsonlContent:
    """Every JSON line of `path` (none when it does not exist), the others listed, for a file a
    killed process may have left with a partial last line (metrics.jsonl)."""
    content = JsonlContent()
    if not Path(path).is_file():
        return content
    for where, value, problem in parsed_lines(path):
        if problem:
            content.bad_lines.append(f"{where}: {problem}")
        else:
            content.values.append(value)
    return content

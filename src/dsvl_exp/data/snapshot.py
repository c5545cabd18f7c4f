"""Parsed datasets kept between runs: a warm start loads a pickle instead of parsing JSON.

Parsing a 1M-line JSONL index costs ~20 CPU-seconds here (JSON and object creation); loading
the same conversations pickled costs ~7. A snapshot is written for readers that draw nothing
(native, llava_json, llava, llava_dial: their output depends only on their files), under the
user's own cache directory (never beside the data: a pickle is only loaded from a place the
user owns). It records the size and mtime of every annotation file and of the reader's own
source file, and is used only while they are unchanged.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import json
import logging
import os
import pickle
import tempfile
from contextlib import contextmanager
from pathlib import Path

from dsvl_exp.data.cache import source_stamps
from dsvl_exp.data.formats.registry import LoadedDataset

log = logging.getLogger(__name__)
VERSION = 1


@contextmanager
def gc_paused():
    """No cyclic garbage collection while millions of long-lived objects are created: each
    full collection walks all of them, which made building 100k conversations ~40 % slower.
    On the way out everything alive is frozen (`gc.freeze`): the conversations live for the whole
    run, and later collections (and the first one after re-enabling) need not walk them again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def snapshot_path(cache_dir: str | Path, spec: dict, path: Path, max_images: int) -> Path:
    key = json.dumps([VERSION, sorted(spec.items()), str(path), max_images], default=str)
    return Path(cache_dir).expanduser() / f"parsed-{spec.get('format')}-{hashlib.sha256(key.encode()).hexdigest()[:32]}.pkl"


def reader_stamp(reader) -> dict:
    return source_stamps([Path(inspect.getsourcefile(reader))])


def load_snapshot(path: Path, reader) -> LoadedDataset | None:
    try:
        with open(path, "rb") as f, gc_paused():
            stamps, loaded = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError):
        return None
    try:
        current = {**source_stamps(loaded.annotation_files), **reader_stamp(reader)}
    except OSError:
        return None
    if current != stamps:
        return None
    log.info("%s: loaded the parsed dataset from %s", ", ".join(map(str, loaded.annotation_files)), path)
    return loaded


def save_snapshot(path: Path, reader, loaded: LoadedDataset) -> None:
    if loaded.redraw is not None:
        return  # its conversations depend on the rng too
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stamps = {**source_stamps(loaded.annotation_files), **reader_stamp(reader)}
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "wb") as f:
            pickle.dump((stamps, loaded), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, path)
    except OSError as error:  # a cache is an optimisation: a read-only cache dir only costs time
        log.warning("could not write the parsed-dataset cache %s: %s", path, error)

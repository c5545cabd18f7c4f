"""Parsed datasets kept between runs: a warm start reads one compact JSON file instead of
running the format's reader (its per-record checks and conversions).

Parsing a 1M-line JSONL index costs ~20 CPU-seconds here (JSON and object creation); a pickle of
the same conversations loaded in ~7, but unpickling runs whatever code the file names, and a
`data.cache_dir` may be shared: the snapshot is plain JSON (lists of strings and numbers, rebuilt
into Conversation/Round here), which cannot run code whoever wrote it. A snapshot is written for
readers that draw nothing (native, llava_json, llava, llava_dial: their output depends only on their
files). It records the size and mtime of every annotation file and of the reader's own source file,
and is used only while they are unchanged; a file that does not parse as one is ignored (parsed again).
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import json
import logging
from contextlib import contextmanager
from pathlib import Path

from dsvl_exp.data.cache import source_stamps
from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.formats.registry import LoadedDataset
from dsvl_exp.files import write_atomically

log = logging.getLogger(__name__)
VERSION = 2  # 2: JSON (1 was a pickle, never read again)


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
    return Path(cache_dir).expanduser() / f"parsed-{spec.get('format')}-{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def reader_stamp(reader) -> dict:
    return source_stamps([Path(inspect.getsourcefile(reader))])


def encode(stamps: dict, loaded: LoadedDataset) -> dict:
    rows = [[c.id, list(c.images), [[r.question, r.answer, r.num_images] for r in c.rounds], c.source, c.meta]
            for c in loaded.conversations]
    return {"version": VERSION, "stamps": stamps, "annotation_files": [str(p) for p in loaded.annotation_files],
            "dropped": loaded.dropped, "conversations": rows}


def decode(payload: dict) -> tuple[dict, LoadedDataset]:
    """KeyError/TypeError/ValueError on anything that is not an encoded snapshot."""
    if payload["version"] != VERSION:
        raise ValueError(f"snapshot version {payload['version']}")
    conversations = [Conversation(str(id_), tuple(map(str, images)), tuple(Round(str(q), str(a), int(n)) for q, a, n in rounds),
                                  str(source), dict(meta))
                     for id_, images, rounds, source, meta in payload["conversations"]]
    dropped = {str(rule): int(count) for rule, count in payload["dropped"].items()}
    loaded = LoadedDataset(conversations, tuple(Path(p) for p in payload["annotation_files"]), None, dropped)
    return payload["stamps"], loaded


def load_snapshot(path: Path, reader) -> LoadedDataset | None:
    try:
        with open(path, encoding="utf-8") as f, gc_paused():
            stamps, loaded = decode(json.load(f))
    except (OSError, KeyError, TypeError, ValueError, AttributeError):  # not ours / damaged: parse again
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
        stamps = {**source_stamps(loaded.annotation_files), **reader_stamp(reader)}
        write_atomically(path, json.dumps(encode(stamps, loaded), ensure_ascii=False, separators=(",", ":")))
    except (OSError, TypeError, ValueError) as error:  # a cache is an optimisation: only costs time
        log.warning("could not write the parsed-dataset cache %s: %s", path, error)

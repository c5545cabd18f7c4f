"""The name -> reader table every format module registers into.

A reader turns one dataset on disk into `Conversation`s:

    read(path, rng, max_images_per_sample, image_dir) -> LoadedDataset

`path` is the file (native, llava_json) or the data root holding the reference layout;
`rng` is the only source of randomness (prompt choice, round order, tag style). A reader with
randomness also returns `redraw`: the same records drawn again from another rng, one
conversation per record in the same order (for `data.redraw_each_epoch`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dsvl_exp.data.conversation import Conversation
from dsvl_exp.data.errors import DataError


@dataclass(frozen=True)
class LoadedDataset:
    conversations: list[Conversation]
    annotation_files: tuple[Path, ...]  # what the conversations were read from (for the fingerprint)
    redraw: Callable[[random.Random], list[Conversation]] | None = None  # None: the reader draws nothing
    dropped: dict[str, int] = field(default_factory=dict)  # rule -> records a preprocessing rule dropped


def drawn(draw: Callable[[random.Random], list[Conversation]], rng: random.Random, annotation_files,
          dropped: dict[str, int] | None = None) -> LoadedDataset:
    """A dataset whose conversations come from `draw(rng)`, re-drawable with another rng."""
    return LoadedDataset(draw(rng), tuple(annotation_files), draw, dict(dropped or {}))


Reader = Callable[[Path, random.Random, int, "Path | None"], LoadedDataset]
READERS: dict[str, Reader] = {}


def register(name: str) -> Callable[[Reader], Reader]:
    def add(reader: Reader) -> Reader:
        if name in READERS:
            raise ValueError(f"data format {name!r} registered twice")
        READERS[name] = reader
        return reader

    return add


def get_reader(name: str, path: str | Path) -> Reader:
    if name not in READERS:
        raise DataError(f"unknown data format {name!r} for {path}; known formats: {sorted(READERS)}")
    return READERS[name]

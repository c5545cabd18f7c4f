"""Does a config change what a run computes? The one answer `diff` (repro/compare.py) and a
resume (training/resume.py) both use: one flattening, one comparison, one list of keys that
say where things are or how a run is watched rather than what it computes."""

from __future__ import annotations

import math
from typing import Any

ABSENT = "<absent>"
# Where things are or how a run is watched and labelled, never what it computes: another cache
# directory, logger, progress bar, checkpoint cadence or resume source gives the same numbers
# (checkpoints restore everything, tested bit for bit), so `diff` calls them volatile and a resume
# may change them.
VOLATILE_KEYS = ("data.synthetic.root", "data.cache_dir", "logger", "train.progress_bar", "resume", "checkpoint",
                 "manifest")
# How long a run trains and how often it logs: a resume may change them (to train on); `diff`
# counts them, since the curves and final values differ.
RUN_LENGTH_KEYS = ("train.max_steps", "train.epochs", "train.log_every_n_steps")


def under(key: str, prefixes: tuple[str, ...]) -> bool:
    """`key` is one of `prefixes` or a key inside one (`logger.wandb.mode` is under `logger`)."""
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def volatile(key: str) -> bool:
    return under(key, VOLATILE_KEYS)


def resume_may_change(key: str) -> bool:
    return under(key, VOLATILE_KEYS + RUN_LENGTH_KEYS)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of nested dicts (and lists holding dicts or lists, by index); a list of plain
    values stays one value (`optim.betas: [0.9, 0.95]`)."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}{key}."))
        return flat or {prefix[:-1]: {}}
    if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        flat = {}
        for index, item in enumerate(value):
            flat.update(flatten(item, f"{prefix}{index}."))
        return flat or {prefix[:-1]: []}
    return {prefix[:-1]: value}


def same_value(a: Any, b: Any, tolerance: float = 0.0) -> bool:
    """Numbers by value (1e-3 == 0.001, 1 == 1.0), bools apart from numbers, NaN equal to NaN."""
    numeric = (int, float)
    if isinstance(a, numeric) and isinstance(b, numeric) and not isinstance(a, bool) and not isinstance(b, bool):
        if math.isnan(a) and math.isnan(b):
            return True
        return abs(a - b) <= tolerance * max(1.0, abs(a), abs(b))
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b

"""Facts about this process that every layer may ask, without torch: who launched it and how much
memory it peaked at. Below `training/` and `repro/`, so neither imports the other for them."""

from __future__ import annotations

import resource
import sys
from collections.abc import Mapping

TORCH_RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def started_by_external_launcher(environ: Mapping[str, str]) -> bool:
    """torchrun and the deepspeed launcher export RANK / WORLD_SIZE / LOCAL_RANK to every rank."""
    return all(name in environ for name in TORCH_RANK_VARIABLES)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024

"""Reading a run's metrics.jsonl and its best values (which way a metric improves is
`dsvl_exp.metric_direction`'s decision, re-exported here)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from dsvl_exp.files import read_jsonl
from dsvl_exp.metric_direction import direction_for

log = logging.getLogger(__name__)

__all__ = ["METRICS", "best_metrics", "direction_for", "read_metrics", "series"]

METRICS = "metrics.jsonl"


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of a run's metrics.jsonl; a line that is not JSON (a run killed mid-write
    leaves a partial last line) is left out, counted and logged."""
    content = read_jsonl(Path(run_dir) / METRICS)
    if content.bad_lines:
        log.warning("%d line(s) of %s are not JSON and were left out (a run killed mid-write leaves a "
                    "partial last line): %s", len(content.bad_lines), Path(run_dir) / METRICS,
                    "; ".join(content.bad_lines[:3]))
    return content.values


def series(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]


def best_metrics(records: list[dict]) -> dict:
    """Per train/eval metric: its best value over the run and the step it came at."""
    best = {}
    keys = {k for r in records for k in r if k.startswith(("train/loss", "eval/"))}
    for key in sorted(keys):
        points = [(step, value) for step, value in series(records, key) if math.isfinite(value)]
        if not points:
            continue
        pick = min if direction_for(key) == "minimize" else max
        step, value = pick(points, key=lambda point: point[1])
        best[key] = {"value": value, "step": step}
    return best

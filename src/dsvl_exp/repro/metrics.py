"""Reading a run's metrics.jsonl and its best values (which way a metric improves is
`dsvl_exp.metric_direction`'s decision, re-exported here)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from dsvl_exp.metric_direction import direction_for

__all__ = ["METRICS", "best_metrics", "direction_for", "read_metrics", "series"]

METRICS = "metrics.jsonl"


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a run killed mid-write leaves a partial last line
            continue
    return records


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

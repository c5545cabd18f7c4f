"""Reading a run's metrics.jsonl and deciding which way a metric improves."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from dsvl_exp.files import read_jsonl

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
LOWER_IS_BETTER = ("loss", "perplexity", "error", "step_time")
HIGHER_IS_BETTER = ("accuracy", "tokens_per_s", "samples_per_s", "score", "bleu", "f1")


def direction_for(metric: str) -> str:
    """`minimize` for losses, `maximize` for accuracies; a clear error for anything else."""
    name = metric.rsplit("/", 1)[-1].lower()
    if any(word in name for word in LOWER_IS_BETTER):
        return "minimize"
    if any(word in name for word in HIGHER_IS_BETTER):
        return "maximize"
    raise ValueError(f"cannot tell whether {metric!r} should be minimised or maximised; name a loss "
                     "(minimised) or an accuracy (maximised) in eval.monitor, or set hydra.sweeper.direction")


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

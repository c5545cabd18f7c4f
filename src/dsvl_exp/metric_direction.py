"""Which way a metric improves, decided once for every layer: the training loop (which checkpoint
is `best`), the sweep report and the Optuna sweeper's direction all ask `direction_for`."""

from __future__ import annotations

import math

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


def improves_on(value: float | None, best: float | None, direction: str) -> bool:
    """A finite `value` better than `best` (None: nothing yet) in `direction`."""
    if value is None or not math.isfinite(value):
        return False
    return best is None or (value < best if direction == "minimize" else value > best)

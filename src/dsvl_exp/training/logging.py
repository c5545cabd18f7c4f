"""Metrics to the console log (`train.log` too), a plain `metrics.jsonl` in the run directory
and the chosen trackers (rank 0), and how a run is named, grouped and tagged."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from dsvl_exp.repro.metrics import METRICS
from dsvl_exp.training.trackers import open_trackers

log = logging.getLogger(__name__)

# The group choices a run is tagged with in W&B (`vision:clip`); attention is decoder.attention.
TAGGED_GROUPS = ("vision", "projection", "zero")


def wandb_identity(experiment: str | None, overrides: list[str], choices: dict, attention: str,
                   sweep_dir: str | None) -> dict:
    """W&B name, group and tags of a run: named by its experiment and command-line overrides
    (`smoke zero=3 optim.lr=5e-4`), the jobs of one multirun grouped by its sweep directory,
    tagged with the group choices."""
    # a resume continues the run it names, so `resume=auto` is not part of the name
    shown = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/", "experiment=", "resume"))]
    tags = [f"{group}:{choices[group]}" for group in TAGGED_GROUPS if choices.get(group) is not None]
    tags.insert(2, f"attention:{attention}")
    return {"name": " ".join([experiment or "default", *shown]), "group": sweep_dir, "tags": tags}


def progress_line(step: int, metrics: dict) -> str | None:
    """The console / train.log line for a logged step: train numbers or eval numbers. A piped
    console has no progress bar, so the line carries the total and the time left."""
    if "train/loss" in metrics:
        total = f"/{metrics['train/total_steps']}" if "train/total_steps" in metrics else ""
        parts = [f"step {step}{total}", f"loss {metrics['train/loss']:.4f}", f"lr {metrics['train/lr']:.2e}",
                 f"tokens/s {metrics['perf/tokens_per_s']:.0f}"]
        if "perf/tokens_per_s_per_device" in metrics:
            parts[-1] += f" ({metrics['perf/tokens_per_s_per_device']:.0f}/device)"
        if "perf/mfu" in metrics:
            parts.append(f"MFU {metrics['perf/mfu']:.1%}")
        if "perf/forward_backward_s" in metrics:
            parts.append(f"step {metrics['perf/step_time_s']:.3f}s = data {metrics['perf/data_wait_s']:.3f} + "
                         f"fwd-bwd {metrics['perf/forward_backward_s']:.3f} + opt {metrics['perf/optimizer_s']:.3f}")
        if "perf/peak_memory_gib" in metrics:
            parts.append(f"mem {metrics['perf/peak_memory_gib']:.2f} GiB")
        if "perf/eta_s" in metrics:
            parts.append(f"eta {duration(metrics['perf/eta_s'])}")
        return " | ".join(parts)
    shown = [f"{key} {value:.4f}" for key, value in metrics.items() if key.startswith("eval/") and isinstance(value, float)]
    return f"step {step} | " + " | ".join(shown) if shown else None


def duration(seconds: float) -> str:
    """2h05m, 2m10s, 7s."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class MetricsLogger:
    """metrics.jsonl and the console on rank 0, plus the trackers `logger` names
    (training/trackers.py); other ranks log nothing."""

    def __init__(self, run_dir: Path, logger_settings: dict, config: dict, enabled: bool,
                 run_ids: dict[str, str] | None = None, resume_step: int | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS
        self.trackers: dict = {}
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        self.trackers = open_trackers(Path(run_dir), logger_settings, config, dict(run_ids or {}), resume_step)

    @property
    def run_ids(self) -> dict[str, str]:
        """Each tracker's run, kept in the checkpoints so a resumed run continues it."""
        return {name: tracker.run_id for name, tracker in self.trackers.items()}

    def log(self, metrics: dict, step: int) -> None:
        """One record to metrics.jsonl and every tracker; train and eval numbers also as a log
        line, so a redirected console (no progress bar) and train.log show the run's progress."""
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        self._file.write(json.dumps(record) + "\n")
        for tracker in self.trackers.values():
            tracker.log(metrics, step)
        line = progress_line(step, metrics)
        if line:
            log.info(line)

    def summary(self, metrics: dict) -> None:
        for tracker in self.trackers.values():
            tracker.summary(metrics)

    def close(self, status: str = "completed") -> None:
        """Closes metrics.jsonl and every tracker, which marks the run with `status` (the run's
        ending: completed, stopped, failed, interrupted). A second call does nothing."""
        if not self.enabled or self._file.closed:
            return
        self._file.close()
        for tracker in self.trackers.values():
            tracker.close(status)

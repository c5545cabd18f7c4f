"""Metrics to the console log (`train.log` too), Weights & Biases and a plain `metrics.jsonl`
in the run directory (rank 0), and how a run is named, grouped and tagged in W&B."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

# The group choices a run is tagged with in W&B (`vision:clip`); attention is decoder.attention.
TAGGED_GROUPS = ("vision", "projection", "zero")


def wandb_identity(experiment: str | None, overrides: list[str], choices: dict, attention: str,
                   sweep_dir: str | None) -> dict:
    """W&B name, group and tags of a run: named by its experiment and command-line overrides
    (`smoke zero=3 optim.lr=5e-4`), the jobs of one multirun grouped by its sweep directory,
    tagged with the group choices."""
    shown = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/", "experiment="))]
    tags = [f"{group}:{choices[group]}" for group in TAGGED_GROUPS if choices.get(group) is not None]
    tags.insert(2, f"attention:{attention}")
    return {"name": " ".join([experiment or "default", *shown]), "group": sweep_dir, "tags": tags}


def progress_line(step: int, metrics: dict) -> str | None:
    """The console / train.log line for a logged step: train numbers or eval numbers."""
    if "train/loss" in metrics:
        return (f"step {step} | loss {metrics['train/loss']:.4f} | lr {metrics['train/lr']:.2e} | "
                f"tokens/s {metrics['perf/tokens_per_s']:.0f}")
    shown = [f"{key} {value:.4f}" for key, value in metrics.items() if key.startswith("eval/") and isinstance(value, float)]
    return f"step {step} | " + " | ".join(shown) if shown else None


class MetricsLogger:
    def __init__(self, run_dir: Path, wandb_settings: dict, config: dict, enabled: bool, run_id: str | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.run = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        if wandb_settings["mode"] != "disabled":
            import wandb

            self.run = wandb.init(
                mode=wandb_settings["mode"],
                project=wandb_settings["project"],
                entity=wandb_settings.get("entity"),
                name=wandb_settings.get("name") or Path(run_dir).name,
                group=wandb_settings.get("group"),
                tags=list(wandb_settings.get("tags") or []),
                dir=str(run_dir),
                config=config,
                id=run_id,  # kept in the checkpoints: a resumed run continues the same W&B run
                resume="allow" if run_id else None,
            )

    def log(self, metrics: dict, step: int) -> None:
        """One record to metrics.jsonl and W&B; train and eval numbers also as a log line, so
        a redirected console (no progress bar) and train.log show the run's progress."""
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        self._file.write(json.dumps(record) + "\n")
        if self.run is not None:
            self.run.log(metrics, step=step)
        line = progress_line(step, metrics)
        if line:
            log.info(line)

    def summary(self, metrics: dict) -> None:
        if self.enabled and self.run is not None:
            self.run.summary.update(metrics)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.run is not None:
            self.run.finish()

"""Metrics to Weights & Biases and to a plain `metrics.jsonl` in the run directory (rank 0)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


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
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        self._file.write(json.dumps(record) + "\n")
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, metrics: dict) -> None:
        if self.enabled and self.run is not None:
            self.run.summary.update(metrics)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.run is not None:
            self.run.finish()

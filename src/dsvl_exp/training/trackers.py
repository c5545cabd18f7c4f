"""The experiment trackers a run logs to: W&B, TensorBoard, MLflow and a CSV table.

Each gets the same scalars (every `MetricsLogger.log` call), the resolved config and the run
name, and reports a run id that the checkpoints keep, so a resumed run continues the same run
in each (W&B by its id, MLflow by its run id; TensorBoard and CSV by their folder / file in the
run directory). `logger.<name>` null means the tracker is not used (config/schema.py).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
import uuid
from pathlib import Path

import yaml

from dsvl_exp.config.meaning import flatten
from dsvl_exp.repro.metrics import read_metrics

log = logging.getLogger(__name__)

# a run's ending (repro/run_end.py) as each tracker marks it
FAILED = ("failed", "interrupted")
MLFLOW_STATUS = {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED", "interrupted": "KILLED"}


def numeric_scalars(metrics: dict) -> dict[str, float]:
    """The values a scalar tracker can plot (TensorBoard and MLflow take numbers only)."""
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def flattened(config: dict) -> dict[str, str]:
    """`{"optim": {"lr": 1e-3}}` -> `{"optim.lr": "0.001"}` (MLflow params are flat strings)."""
    return {key: json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            for key, value in flatten(config).items()}


class WandbTracker:
    def __init__(self, run_dir: Path, settings: dict, config: dict, run_name: str, run_id: str | None,
                 resume_step: int | None = None):
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.run = None
        if settings["mode"] == "disabled":
            return
        import wandb

        self.run = wandb.init(
            mode=settings["mode"], project=settings["project"], entity=settings.get("entity"),
            name=run_name, group=settings.get("group"), tags=list(settings.get("tags") or []),
            dir=str(run_dir), config=config,
            id=self.run_id, resume="allow",  # the id kept in the checkpoints: a resumed run continues this one
        )

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, metrics: dict) -> None:
        if self.run is not None:
            self.run.summary.update(metrics)

    def close(self, status: str = "completed") -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if status in FAILED else 0)
            self.run = None


class TensorBoardTracker:
    """Event files in one folder per run; a resumed run adds event files to the same folder,
    which TensorBoard shows as one run."""

    def __init__(self, run_dir: Path, settings: dict, config: dict, run_name: str, run_id: str | None,
                 resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(settings.get("save_dir") or Path(run_dir) / "tensorboard")
        self.run_id = run_id or str(self.log_dir)
        # purge_step: events a killed run wrote after the checkpoint it resumes from are dropped
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=None if resume_step is None else resume_step + 1)
        if run_id is None:  # a resumed run already has them
            self.writer.add_text("run_name", run_name, 0)
            self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)

    def log(self, metrics: dict, step: int) -> None:
        for key, value in numeric_scalars(metrics).items():
            self.writer.add_scalar(key, value, step)

    def summary(self, metrics: dict) -> None:
        self.writer.flush()

    def close(self, status: str = "completed") -> None:
        self.writer.close()


class MlflowTracker:
    def __init__(self, run_dir: Path, settings: dict, config: dict, run_name: str, run_id: str | None,
                 resume_step: int | None = None):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = settings.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # MLflow 3 keeps the file store (no database to set up, readable by `mlflow ui`) but asks
            # for this opt-in; a tracking_uri such as sqlite:///mlflow.db needs the full mlflow package
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (Path(run_dir) / "mlruns").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        self.tracking_uri = uri
        if run_id is None:
            experiment = self.client.get_experiment_by_name(settings["experiment_name"])
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(settings["experiment_name"])
            run = self.client.create_run(experiment_id, run_name=run_name, tags=dict(settings.get("tags") or {}))
            run_id = run.info.run_id
            params = [Param(key, value[:6000]) for key, value in flattened(config).items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(run_id, params=params[start:start + 100])
            self.client.log_text(run_id, yaml.safe_dump(config, sort_keys=False), "config.yaml")
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        scalars = [Metric(key, value, now, step) for key, value in numeric_scalars(metrics).items()]
        if scalars:
            self.client.log_batch(self.run_id, metrics=scalars)

    def summary(self, metrics: dict) -> None:
        pass  # the last value of each metric is MLflow's summary

    def close(self, status: str = "completed") -> None:
        self.client.set_terminated(self.run_id, status=MLFLOW_STATUS.get(status, "FINISHED"))


class CsvTracker:
    """One row per logged step, one column per metric seen so far. Written by hand: the CSV
    loggers people know (Lightning's) come with a framework this project does not use. A new
    column rewrites the file (a few hundred rows at most), so every row keeps the header's order."""

    def __init__(self, run_dir: Path, settings: dict, config: dict, run_name: str, run_id: str | None,
                 resume_step: int | None = None):
        self.path = Path(run_dir) / settings["filename"]
        self.run_id = run_id or self.path.name
        self.rows: list[dict] = []
        if resume_step is not None:
            # resumed: the rows of metrics.jsonl, which the resume already cut back to the checkpoint's step
            records = read_metrics(run_dir)
            self.rows = [{"step": r["step"], **numeric_scalars({k: v for k, v in r.items() if k not in ("step", "time")})}
                         for r in records]
        self.columns = list(dict.fromkeys(["step", *(key for row in self.rows for key in row)]))
        self._write_all()

    def _write_all(self) -> None:
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def log(self, metrics: dict, step: int) -> None:
        row = {"step": step, **numeric_scalars(metrics)}
        self.rows.append(row)
        if set(row) - set(self.columns):
            self.columns += [key for key in row if key not in self.columns]
            self._write_all()
            return
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns).writerow(row)

    def summary(self, metrics: dict) -> None:
        pass

    def close(self, status: str = "completed") -> None:
        pass


TRACKERS = {"wandb": WandbTracker, "tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "csv": CsvTracker}


def open_trackers(run_dir: Path, logger_settings: dict, config: dict, run_ids: dict[str, str],
                  resume_step: int | None = None) -> dict:
    """The trackers whose `logger.<name>` is set, each continuing its run in `run_ids` (from the
    checkpoint being resumed, at `resume_step`) or starting one."""
    run_name = logger_settings.get("run_name") or Path(run_dir).name
    opened = {}
    for name, tracker_type in TRACKERS.items():
        settings = logger_settings.get(name)
        if settings is not None:
            opened[name] = tracker_type(Path(run_dir), settings, config, run_name, run_ids.get(name), resume_step)
            log.info("logging to %s (run %s)", name, opened[name].run_id)
    return opened

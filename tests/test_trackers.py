"""The `logger` group: W&B, TensorBoard, MLflow and CSV, alone or several at once, read back the
way a user opens them (TensorBoard's event reader, `mlflow.get_run`, a CSV reader), and a
stopped run resumed into the same run of each tracker."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import compose_config
from helpers import read_metrics, run_train, start_cli, train_command

RUN = ("experiment=smoke", "train.max_steps=6", "train.log_every_n_steps=1", "eval.every_n_steps=3",
       "eval.max_new_tokens=2", "checkpoint.every_n_steps=2")


@pytest.mark.parametrize("choice, chosen", [
    ([], {"wandb"}),
    (["logger=tensorboard"], {"tensorboard"}),
    (["logger=[wandb,tensorboard]"], {"wandb", "tensorboard"}),
    (["logger=many_loggers"], {"wandb", "tensorboard", "mlflow", "csv"}),
])
def test_logger_group_options_and_the_list_form(choice, chosen):
    logger = compose_config(*choice).logger
    assert {name for name in ("wandb", "tensorboard", "mlflow", "csv") if logger[name] is not None} == chosen
    assert "console" not in logger


def test_wandb_mode_stays_a_public_key():
    assert compose_config("logger.wandb.mode=disabled").logger.wandb.mode == "disabled"
    assert compose_config("logger=[wandb,csv]", "logger.wandb.mode=online").logger.wandb.mode == "online"
    with pytest.raises(Exception, match="logger.wandb.mode"):
        compose_config("logger.wandb.mode=sometimes")


def tensorboard_scalars(log_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)}


def stop_after_step(run_dir: Path, step: int, *overrides: str) -> str:
    process = start_cli(train_command(run_dir, *overrides), cwd=run_dir.parent, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if any(line.endswith("}") and json.loads(line)["step"] >= step for line in lines):
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.01)
    return process.communicate(timeout=300)[0]


@pytest.mark.slow
def test_every_tracker_gets_the_same_scalars_config_and_name_and_a_resume_continues_each(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    overrides = (*RUN, "logger=[tensorboard,mlflow,csv]")
    output = stop_after_step(run_dir, 3, *overrides)
    assert "stopped by SIGTERM" in output, output[-3000:]
    first_state = json.loads((run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text()
                              / "trainer_state.json").read_text())
    run_train(run_dir, *overrides, "resume=auto")

    losses = {m["step"]: m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    config = json.loads(json.dumps(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())))
    run_name = config["logger"]["run_name"]
    assert run_name.startswith("smoke ") and "logger=[tensorboard,mlflow,csv]" in run_name

    # TensorBoard: one folder, the same losses at the same steps (both processes' event files)
    assert tensorboard_scalars(run_dir / "tensorboard", "train/loss") == pytest.approx(losses, rel=1e-6)
    assert sorted(tensorboard_scalars(run_dir / "tensorboard", "eval/loss")) == [3, 6]

    # MLflow: the run the checkpoint named, continued after the resume
    mlflow_id = first_state["tracker_runs"]["mlflow"]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks readers of a file store too
    mlflow.set_tracking_uri((run_dir / "mlruns").as_uri())
    run = mlflow.get_run(mlflow_id)
    assert run.info.run_name == run_name and run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == str(config["optim"]["lr"]) and run.data.params["seed"] == "0"
    history = MlflowClient().get_metric_history(mlflow_id, "train/loss")
    assert {m.step: m.value for m in history} == pytest.approx(losses)
    assert len(history) == 6  # no step twice, none lost
    assert len(mlflow.search_runs(experiment_names=["dsvl_exp"])) == 1
    final_state = json.loads((run_dir / "checkpoints" / "step-00000006" / "trainer_state.json").read_text())
    assert final_state["tracker_runs"]["mlflow"] == mlflow_id

    # CSV: one row per logged step, a column per metric
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {int(r["step"]): float(r["train/loss"]) for r in rows if r["train/loss"]} == pytest.approx(losses)
    assert [int(r["step"]) for r in rows if r.get("eval/loss")] == [3, 6]


def test_a_resume_after_a_kill_drops_what_was_logged_after_the_checkpoint(tmp_path):
    """TensorBoard and CSV keep each step once when a run killed at step 5 resumes from step 3."""
    from dsvl_exp.training.logging import MetricsLogger
    from dsvl_exp.training.resume import truncate_metrics

    settings = {"run_name": "r", "tensorboard": {"save_dir": None}, "csv": {"filename": "metrics.csv"}}
    first = MetricsLogger(tmp_path, settings, {"seed": 0}, enabled=True)
    for step in range(1, 6):
        first.log({"train/loss": float(step), "train/lr": 1e-3, "perf/tokens_per_s": 1.0}, step)
    first.close()  # as far as the files go, a kill after step 5 (checkpoint at 3)
    truncate_metrics(tmp_path / "metrics.jsonl", 3)
    resumed = MetricsLogger(tmp_path, settings, {"seed": 0}, enabled=True, run_ids=first.run_ids, resume_step=3)
    for step in (4, 5, 6):
        resumed.log({"train/loss": 10.0 * step, "train/lr": 1e-3, "perf/tokens_per_s": 1.0}, step)
    resumed.log({"eval/loss": 0.5}, 6)
    resumed.close()

    expected = {1: 1.0, 2: 2.0, 3: 3.0, 4: 40.0, 5: 50.0, 6: 60.0}
    assert tensorboard_scalars(tmp_path / "tensorboard", "train/loss") == expected
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["step"]), r["train/loss"], r["eval/loss"]) for r in rows] == [
        (1, "1.0", ""), (2, "2.0", ""), (3, "3.0", ""), (4, "40.0", ""), (5, "50.0", ""), (6, "60.0", ""), (6, "", "0.5")]


def test_a_tracker_that_is_not_installed_fails_at_composition_with_the_fix(monkeypatch):
    import importlib.util

    from dsvl_exp.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"logger=mlflow needs the mlflow package: pip install 'dsvl_exp\[trackers\]'"):
        compose_config("logger=[wandb,mlflow]")
    compose_config("logger=[wandb,tensorboard]")

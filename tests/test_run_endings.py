"""Every run ends through the recipe's cleanup phase (repro/run_end.py), however it ended:
its trackers closed and marked with the ending, manifest.json's status and reason, the process
group torn down. One run per ending, through the real entry point."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import start_cli, subprocess_env

RUN = ("experiment=smoke", "train.log_every_n_steps=1", "eval.every_n_steps=null", "eval.generation=false",
       "eval.monitor=eval/loss", "logger=mlflow")

# The entry point as `python -m dsvl_exp.train` runs it, plus what a test needs to see: a step at
# which the loop raises (DSVL_TEST_FAIL_AT_STEP) and the process group's state once the run ended.
ENTRY = """
import os, sys
import torch.distributed as dist
from dsvl_exp import train
from dsvl_exp.training import loop

fail_at = int(os.environ.get("DSVL_TEST_FAIL_AT_STEP", 0))
real_evaluate_and_save = loop.TrainingLoop.evaluate_and_save
def evaluate_and_save(self, step, stopping):
    if step == fail_at:
        raise RuntimeError(f"simulated failure at step {step}")
    return real_evaluate_and_save(self, step, stopping)
loop.TrainingLoop.evaluate_and_save = evaluate_and_save
sys.argv = ["dsvl_exp.train", *sys.argv[1:]]
try:
    train.main()
finally:
    print(f"process group initialized after the run: {dist.is_initialized()}", flush=True)
"""


def start(tmp_path: Path, *overrides: str, fail_at_step: int = 0) -> tuple[subprocess.Popen, Path]:
    run_dir = tmp_path / "run"
    script = tmp_path / "entry.py"
    script.write_text(ENTRY)
    command = [sys.executable, str(script), f"hydra.run.dir={run_dir}", "train.progress_bar=false", *RUN, *overrides]
    process = start_cli(command, cwd=tmp_path, env=subprocess_env(DSVL_TEST_FAIL_AT_STEP=str(fail_at_step)),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return process, run_dir


def ended(run_dir: Path, monkeypatch) -> tuple[dict, str]:
    """The manifest, and the status MLflow's run was closed with."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the store the run wrote (training/trackers.py)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    [experiment] = [e for e in client.search_experiments() if e.name != "Default"]
    [run] = client.search_runs([experiment.experiment_id])
    return manifest, run.info.status


@pytest.mark.slow
def test_a_completed_run(tmp_path, monkeypatch):
    process, run_dir = start(tmp_path, "train.max_steps=2")
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    manifest, tracker_status = ended(run_dir, monkeypatch)
    assert (manifest["status"], manifest["reason"], manifest["error"]) == ("completed", "trained to step 2", None)
    assert manifest["outcome"]["exit_status"] == "completed" and manifest["outcome"]["final"]["steps"] == 2
    assert tracker_status == "FINISHED"
    assert "process group initialized after the run: False" in output


@pytest.mark.slow
def test_a_run_stopped_by_sigterm(tmp_path, monkeypatch):
    process, run_dir = start(tmp_path, "train.max_steps=200")
    metrics = run_dir / "metrics.jsonl"
    while process.poll() is None:
        if metrics.is_file() and any('"train/loss"' in line for line in metrics.read_text().splitlines()):
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    manifest, tracker_status = ended(run_dir, monkeypatch)
    stopped_at = int((run_dir / "checkpoints" / "latest").read_text().removeprefix("step-"))
    assert 1 <= stopped_at < 200
    assert manifest["status"] == "stopped" and manifest["error"] is None
    assert manifest["reason"] == (f"stopped by SIGTERM after step {stopped_at}; "
                                  f"checkpoint {run_dir / 'checkpoints' / f'step-{stopped_at:08d}'}")
    assert f"{manifest['reason']}. Resume with the same command plus hydra.run.dir={run_dir} resume=auto" in output
    assert tracker_status == "KILLED"
    assert "process group initialized after the run: False" in output


@pytest.mark.slow
def test_a_run_failed_by_an_exception(tmp_path, monkeypatch):
    process, run_dir = start(tmp_path, "train.max_steps=4", fail_at_step=2)
    output, _ = process.communicate(timeout=600)
    assert process.returncode != 0, output[-3000:]
    manifest, tracker_status = ended(run_dir, monkeypatch)
    assert manifest["status"] == "failed"
    assert manifest["reason"] == manifest["error"] == "RuntimeError: simulated failure at step 2"
    assert [m["step"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "train/loss" in m] == [1, 2]
    assert manifest["outcome"]["final"]["step"] == 2  # a failed run's outcome: its last logged values
    assert tracker_status == "FAILED"
    assert "process group initialized after the run: False" in output


def test_each_part_of_the_ending_runs_when_the_one_before_it_raised(tmp_path):
    from dsvl_exp.repro import manifest
    from dsvl_exp.repro.run_end import RunEnding, end_run

    class BrokenTrackers:
        def close(self, status):
            self.status = status
            raise OSError("tracker server gone")

    manifest.write_manifest(tmp_path, {"status": "running"})
    trackers = BrokenTrackers()
    ending = RunEnding.of_error(ValueError("bad batch\nmore lines"))
    with pytest.raises(OSError, match="tracker server gone"):
        end_run(tmp_path, ending, record=True, trackers=trackers, monitor="eval/loss", keep_process_group=True)
    recorded = manifest.read_manifest(tmp_path)
    assert trackers.status == "failed"
    assert (recorded["status"], recorded["reason"], recorded["error"]) == ("failed", "ValueError: bad batch",
                                                                          "ValueError: bad batch")
    assert RunEnding.of_error(KeyboardInterrupt()).status == "interrupted"

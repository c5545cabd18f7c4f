"""End to end through the real entry point (`python -m dsvl_exp.train`)."""

import math

import pytest
import yaml

from helpers import read_metrics, run_train


@pytest.mark.slow
def test_smoke_run_trains_and_logs(tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(run_dir, "experiment=smoke", "train.max_steps=40", "train.log_every_n_steps=5", "eval.every_n_steps=20")
    metrics = read_metrics(run_dir)
    train = [m for m in metrics if "train/loss" in m]
    evals = [m for m in metrics if "eval/loss" in m]
    assert [m["step"] for m in train] == list(range(5, 45, 5))
    for key in ("train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/samples_per_s"):
        assert all(isinstance(m[key], float) and math.isfinite(m[key]) for m in train), key
    assert train[-1]["train/loss"] < train[0]["train/loss"] * 0.8
    assert [m["step"] for m in evals] == [20, 40] and evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert 0.0 <= evals[-1]["eval/accuracy"] <= 1.0
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 40 and "${" not in (run_dir / "config.yaml").read_text()
    assert (run_dir / ".hydra" / "overrides.yaml").exists()
    assert f"run directory: {run_dir}" in result.stdout and "eval answer accuracy" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["2", "3"])
def test_zero_stage_runs_as_typed(tmp_path, stage):
    run_dir = tmp_path / f"zero{stage}"
    run_train(run_dir, f"zero={stage}", "experiment=smoke", "eval.generation=false", "eval.monitor=eval/loss")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["zero"]["stage"] == int(stage)
    train = [m for m in read_metrics(run_dir) if "train/loss" in m]
    assert train[-1]["train/loss"] < train[0]["train/loss"]


@pytest.mark.slow
def test_same_seed_same_losses(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for run_dir in (a, b):
        run_train(run_dir, "experiment=smoke", "eval.generation=false", "eval.monitor=eval/loss")
    losses = lambda d: [m["train/loss"] for m in read_metrics(d) if "train/loss" in m]  # noqa: E731
    assert losses(a) == losses(b)


@pytest.mark.slow
def test_bad_data_fails_before_training_with_a_clear_message(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "s1", "images": ["missing.png"], "rounds": [{"question": "<image>\\nq", "answer": "a"}]}\n')
    with pytest.raises(AssertionError, match=r"d\.jsonl:1: image file not found: .*missing\.png"):
        run_train(tmp_path / "run", "data=native", f"data.train.0.path={data}", f"data.eval.0.path={data}")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_multirun_over_zero_stages_as_typed(tmp_path):
    import os
    import subprocess
    import sys

    from helpers import REPO

    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "dsvl_exp.train", "-m", "zero=2,3", "experiment=smoke", "train.max_steps=4",
               "eval.generation=false", "eval.monitor=eval/loss", "train.progress_bar=false", f"hydra.sweep.dir={sweep_dir}"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    stages = {}
    for job in ("0", "1"):
        saved = yaml.safe_load((sweep_dir / job / "config.yaml").read_text())
        stages[job] = saved["zero"]["stage"]
        assert read_metrics(sweep_dir / job)[-1]["eval/loss"] > 0
    assert stages == {"0": 2, "1": 3}

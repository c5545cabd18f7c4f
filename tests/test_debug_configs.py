"""debug=fast and debug=overfit (lightning-hydra-template's debug configs) through the real entry point."""

from __future__ import annotations

import pytest
from conftest import compose_config

from helpers import read_metrics, run_train


def test_debug_configs_compose_over_an_experiment():
    fast = compose_config("experiment=smoke", "debug=fast")
    assert (fast.train.max_steps, fast.eval.max_batches, fast.checkpoint.every_n_steps) == (1, 1, None)
    overfit = compose_config("experiment=smoke", "debug=overfit")
    assert (overfit.data.synthetic.num_train, overfit.train.max_steps, overfit.optim.lr) == (16, 100, 3e-3)
    assert fast.logger.wandb.mode == overfit.logger.wandb.mode == "disabled"


@pytest.mark.slow
def test_debug_fast_runs_every_phase_once(tmp_path):
    run_dir = tmp_path / "run"
    run_train(run_dir, "debug=fast")
    records = read_metrics(run_dir)
    assert [r["step"] for r in records if "train/loss" in r] == [1]
    assert [r["step"] for r in records if "eval/loss" in r] == [1] and "eval/accuracy" in records[-1]
    assert (run_dir / "checkpoints" / "latest").is_file() and (run_dir / "export" / "model.safetensors").is_file()
    # the model card of a later export from the checkpoint says what the run's own export says
    from helpers import run_module, subprocess_env

    run_module("dsvl_exp.export", run_dir, "--out", tmp_path / "later", env=subprocess_env(DSVL_CACHE_DIR=str(tmp_path)))
    assert (tmp_path / "later" / "README.md").read_text() == (run_dir / "export" / "README.md").read_text()


@pytest.mark.slow
def test_debug_overfit_learns_two_batches_by_heart(tmp_path):
    run_dir = tmp_path / "run"
    run_train(run_dir, "debug=overfit")
    losses = [r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r]
    assert len(losses) == 10 and losses[-1] < 0.2 and losses[-1] < 0.05 * losses[0], losses  # 4.80 -> 0.048

"""Fast checks of the sweep direction, secret filtering and value comparison."""

import pytest
from omegaconf import OmegaConf

from conftest import compose_config
from dsvl_exp.repro.compare import same_value
from dsvl_exp.repro.environment import safe_environment
from dsvl_exp.repro.metrics import direction_for
from dsvl_exp.repro.sweeps import SweepDirectionCheck, check_direction


def test_direction_follows_the_metric_name():
    assert direction_for("eval/loss") == direction_for("train/loss") == "minimize"
    assert direction_for("eval/accuracy") == "maximize"
    with pytest.raises(ValueError, match="hydra.sweeper.direction"):
        direction_for("eval/mystery")


@pytest.mark.parametrize("monitor, direction", [("eval/accuracy", "maximize"), ("eval/loss", "minimize")])
def test_hparams_search_optuna_direction_follows_eval_monitor(monitor, direction):
    cfg = compose_config("hparams_search=optuna", f"eval.monitor={monitor}", "eval.generation=true", hydra=True)
    assert cfg.hydra.sweeper.direction == direction
    assert cfg.hydra.sweeper.sampler.seed == cfg.seed and cfg.hydra.sweeper.max_failure_rate == 1.0
    assert cfg.hydra.sweeper.params["optim.lr"] == "tag(log, interval(1e-4, 1e-2))"


def test_a_hand_set_direction_against_the_monitor_stops_the_sweep():
    cfg = compose_config("hydra/sweeper=optuna", "eval.monitor=eval/accuracy", hydra=True)  # plugin default: minimize
    with pytest.raises(ValueError, match="hydra.sweeper.direction=minimize but eval.monitor=eval/accuracy"):
        check_direction(cfg)
    with pytest.raises(SystemExit):  # Hydra only warns about a callback's exception; an exit stops it
        SweepDirectionCheck().on_multirun_start(config=cfg)
    cfg = compose_config("hydra/sweeper=optuna", "eval.monitor=eval/loss", hydra=True)
    SweepDirectionCheck().on_multirun_start(config=cfg)


def test_secret_looking_variables_are_never_kept():
    kept = safe_environment({"WANDB_API_KEY": "x", "HF_TOKEN": "x", "OMP_NUM_THREADS": "1", "HOME": "/h",
                             "DS_PASSWORD": "x", "WANDB_MODE": "offline"})
    assert kept == {"OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def test_numbers_compare_by_value():
    assert same_value(1e-3, 0.001) and same_value(1, 1.0) and same_value(float("nan"), float("nan"))
    assert not same_value(True, 1) and not same_value(0.001, 0.0011)
    assert OmegaConf.create({"a": 1e-3}).a == 0.001


def test_parallel_launcher_is_joblib_with_two_workers():
    cfg = compose_config("hydra/launcher=parallel", hydra=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2


def test_the_project_experiments_compose_as_sweeps():
    grid = compose_config("experiment=projection_attention_ablation", hydra=True)
    assert dict(grid.hydra.sweeper.params) == {"projection": "baseline,vit,perceiver", "decoder.attention": "causal,mmca"}
    assert grid.eval.monitor == "eval/loss" and grid.train.max_steps == 200
    search = compose_config("experiment=lr_search", hydra=True)
    assert search.hydra.sweeper.direction == "minimize" and search.hydra.sweeper.n_trials == 8
    assert search.hydra.sweeper.params["optim.lr"] == "tag(log, interval(1e-4, 3e-2))"

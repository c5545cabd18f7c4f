"""The optimizer and the schedule are `_target_` / `_partial_` configs (optim.optimizer from the
`optimizer` group, optim.scheduler): swapped from the command line, still validated."""

from __future__ import annotations

import json

import pytest
from hydra.errors import ConfigCompositionException

from conftest import compose_config
from dsvl_exp.errors import ConfigError
from helpers import REPO, read_metrics, run_cli, run_train, train_command

GOLDEN = json.loads((REPO / "tests" / "golden" / "smoke.json").read_text())["values"]
SHORT = ("experiment=smoke", "train.max_steps=10", "eval.generation=false", "eval.monitor=eval/loss")


def test_optimizer_options_and_targets_compose():
    assert compose_config().optim.optimizer._target_ == "torch.optim.AdamW"
    sgd = compose_config("optimizer=sgd").optim.optimizer
    assert (sgd._target_, sgd._partial_, sgd.momentum) == ("torch.optim.SGD", True, 0.9)
    radam = compose_config("optim.optimizer._target_=torch.optim.RAdam").optim.optimizer
    assert (radam._target_, list(radam.betas)) == ("torch.optim.RAdam", [0.9, 0.95])
    assert compose_config("optim.scheduler.name=linear").optim.scheduler.name == "linear"
    with pytest.raises(ConfigCompositionException):
        compose_config("optim.optimizer.momentum=0.9")  # AdamW takes no momentum: a misspelt key
    with pytest.raises(ConfigError, match=r"optim\.optimizer\.betas=\[0\.9, 1\.5\]"):
        compose_config("optim.optimizer.betas=[0.9,1.5]")


@pytest.mark.slow
def test_sgd_swapped_in_from_the_command_line_trains(tmp_path):
    run_dir = tmp_path / "sgd"
    result = run_train(run_dir, *SHORT, "optimizer=sgd", "optim.lr=0.05")
    assert "Instantiating optim.optimizer <torch.optim.SGD>" in result.stdout + result.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["optim"]["optimizer"]["_target_"] == "torch.optim.SGD"
    losses = {record["step"]: record["train/loss"] for record in read_metrics(run_dir) if "train/loss" in record}
    assert sorted(losses) == [5, 10] and losses[10] < losses[5]
    assert losses[5] != pytest.approx(GOLDEN["train/loss"][0][1], rel=1e-3)  # not AdamW's numbers


@pytest.mark.slow
def test_an_optimizer_target_that_does_not_exist_is_a_config_error(tmp_path):
    result = run_cli(train_command(tmp_path / "run", *SHORT, "optim.optimizer._target_=torch.optim.Nope"), cwd=tmp_path,
                     check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "optim.optimizer._target_=torch.optim.Nope" in result.stderr

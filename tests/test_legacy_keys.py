"""Runs written before the optimizer, scheduler and zero keys were renamed still resume and diff:
config/legacy_keys.py reads their configs in today's names (keys that did not exist then at their
defaults). The old layout is written as an old run wrote it: a new run's saved config, renamed back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import compose_config
from dsvl_exp.config.legacy_keys import upgrade, upgrade_overrides
from helpers import REPO, read_metrics, run_train

RUN = ("experiment=smoke", "train.max_steps=6", "train.log_every_n_steps=1", "checkpoint.every_n_steps=3",
       "optim.scheduler.name=cosine")


def old_layout(config: dict) -> dict:
    """`config` as a run wrote it before the renames: optim.betas/eps/scheduler at the top of
    optim, no optim.optimizer, zero offloads as none|cpu strings, no zero.single_rank."""
    optim, zero = config["optim"], config["zero"]
    optimizer = optim.pop("optimizer")
    optim.update(betas=optimizer["betas"], eps=optimizer["eps"], scheduler=optim["scheduler"]["name"])
    for key in ("offload_optimizer", "offload_param"):
        zero[key] = zero[key]["device"]
    del zero["single_rank"]
    return config


def current_config(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_config(*overrides), resolve=True, enum_to_str=True)


def test_upgrade_maps_the_old_names_and_leaves_a_current_config_alone():
    current = current_config("zero=3_offload", "train.decoder=lora", "optim.scheduler.name=linear")
    assert upgrade(current) == current
    old = old_layout(json.loads(json.dumps(current)))
    assert old["optim"]["scheduler"] == "linear" and old["zero"]["offload_param"] == "cpu"
    assert upgrade(old) == current
    assert upgrade_overrides(["optim.scheduler=linear", "+optim.betas=[0.9,0.9]", "zero.offload_optimizer=cpu", "zero=3"]) == [
        "optim.scheduler.name=linear", "+optim.optimizer.betas=[0.9,0.9]", "zero.offload_optimizer.device=cpu", "zero=3"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_train(run_dir, *RUN)
    return run_dir


@pytest.mark.slow
def test_an_old_layout_checkpoint_resumes_to_the_uninterrupted_losses(reference_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir, symlinks=True)
    checkpoints = run_dir / "checkpoints"
    for entry in checkpoints.iterdir():  # back to the step-3 checkpoint, as if the run had stopped there
        if entry.name not in ("step-00000003", "latest"):
            entry.unlink() if entry.is_symlink() or entry.is_file() else shutil.rmtree(entry)
    (checkpoints / "latest").write_text("step-00000003")
    saved = checkpoints / "step-00000003" / "config.yaml"
    saved.write_text(yaml.safe_dump(old_layout(yaml.safe_load(saved.read_text()))))
    marker = checkpoints / "step-00000003" / "checkpoint_complete.json"  # the old run recorded its own file's size
    record = json.loads(marker.read_text())
    record["files"]["config.yaml"] = saved.stat().st_size
    marker.write_text(json.dumps(record))
    assert "betas" in yaml.safe_load(saved.read_text())["optim"]

    result = run_train(run_dir, *RUN, "resume=auto")
    assert "resuming from" in result.stdout + result.stderr
    losses = [(m["step"], m["train/loss"]) for m in read_metrics(run_dir) if "train/loss" in m]
    assert [step for step, _ in losses] == [1, 2, 3, 4, 5, 6]
    assert losses == [(m["step"], m["train/loss"]) for m in read_metrics(reference_run) if "train/loss" in m]


@pytest.mark.slow
def test_diff_of_an_old_layout_run_and_a_new_identical_one_is_identical(reference_run, tmp_path):
    old_run = tmp_path / "old"
    shutil.copytree(reference_run, old_run, symlinks=True)
    manifest = json.loads((old_run / "manifest.json").read_text())
    manifest["config"] = old_layout(manifest["config"])
    manifest["hydra"]["overrides"] = [o.replace("optim.scheduler.name=", "optim.scheduler=") for o in manifest["hydra"]["overrides"]]
    assert "optim.scheduler=cosine" in manifest["hydra"]["overrides"]
    (old_run / "manifest.json").write_text(json.dumps(manifest))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "dsvl_exp.diff", str(old_run), str(reference_run), "--format", "json"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [comparison] = json.loads(result.stdout)
    assert comparison["verdict"] == "identical", comparison["differences"]

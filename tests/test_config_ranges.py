"""Config values that would mean something else (0 read as "never", a negative rate, an ignored
key) are refused before anything is built, naming the key and the allowed range; and a resume
that cannot load (another world size, ZeRO stage or architecture) is refused with a message."""

from __future__ import annotations

import json

import pytest

from conftest import compose_config
from dsvl_exp.errors import ConfigError
from helpers import run_module


@pytest.mark.parametrize("override, message", [
    ("eval.every_n_steps=0", r"eval.every_n_steps=0 must be at least 1 \(null: never\)"),
    ("eval.every_n_steps=-5", r"eval.every_n_steps=-5 must be at least 1"),
    ("checkpoint.every_n_steps=0", r"checkpoint.every_n_steps=0 must be at least 1 \(null: never\)"),
    ("checkpoint.keep_last=0", r"checkpoint.keep_last=0 must be at least 1 \(null: keep all\)"),
    ("checkpoint.keep_last=-1", r"checkpoint.keep_last=-1 must be at least 1"),
    ("optim.warmup_steps=-5", r"optim.warmup_steps=-5 must be at least 0"),
    ("train.gradient_clipping=-1", r"train.gradient_clipping=-1.0 must be at least 0 \(0: no clipping\)"),
    ("optim.lr=-0.001", r"optim.lr=-0.001 must be greater than 0"),
    ("eval.batch_size=0", r"eval.batch_size=0 must be at least 1"),
    ("lora.decoder.r=0", r"lora.decoder.r=0 must be at least 1"),
    ("optim.optimizer.betas=[0.9,1.0]", r"optim.optimizer.betas=\[0.9, 1.0\]: each beta must be in \[0, 1\)"),
    ("optim.optimizer.betas=[-0.1,0.9]", r"optim.optimizer.betas=\[-0.1, 0.9\]: each beta must be in \[0, 1\)"),
    ("eval.max_new_tokens=0", r"eval.max_new_tokens=0 must be at least 1 while eval.generation=true"),
    ("vision.patch_size=7", r"vision.patch_size=7 does not divide vision.image_size=32"),
    ("train.global_batch_size=16 train.grad_accum=2", r"train.global_batch_size=16 and train.grad_accum=2 are both set"),
    ("train.global_batch_size=12", r"train.global_batch_size=12 is not a multiple of train.micro_batch_size=8"),
    ("projection=perceiver projection.num_queries=10", r"projection.num_queries=10 must be a square"),
    ("vision=qwen vision.num_queries=10", r"vision.num_queries=10 must be a square"),
])
def test_values_outside_their_range_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_config(*override.split())


def test_values_at_the_edges_of_their_range_are_accepted():
    compose_config("eval.every_n_steps=null", "checkpoint.every_n_steps=null", "checkpoint.keep_last=null",
                   "optim.warmup_steps=0", "train.gradient_clipping=0", "eval.generation=false", "eval.max_new_tokens=0",
                   "eval.monitor=eval/loss", "train.global_batch_size=16", "optim.optimizer.betas=[0,0.999]")


def test_a_checkpoint_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"checkpoint.dir=.*file is a file"):
        compose_config(f"checkpoint.dir={tmp_path / 'file'}")


def run_entry_point(cwd, *overrides):
    return run_module("dsvl_exp.train", "train.progress_bar=false", *overrides, cwd=cwd, timeout=300, check=False)


def test_a_broken_experiment_yaml_and_a_run_dir_that_is_a_file_are_one_paragraph(tmp_path):
    experiments = tmp_path / "experiments"
    (experiments / "experiment").mkdir(parents=True)
    (experiments / "experiment" / "broken.yaml").write_text("# @package _global_\ntrain: {max_steps: 3\n")
    (tmp_path / "taken").write_text("a file, not a directory")
    for overrides, message in (
        ([f"hydra.searchpath=[file://{experiments}]", "experiment=broken"], "broken.yaml"),
        ([f"hydra.run.dir={tmp_path / 'taken'}"], f"{tmp_path / 'taken'}"),
    ):
        result = run_entry_point(tmp_path, *overrides)
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr and result.stderr.startswith("error: "), result.stderr[-3000:]
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr[-3000:]


@pytest.mark.slow
def test_a_resume_with_another_zero_stage_or_architecture_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    base = ("experiment=smoke", "train.max_steps=2", "checkpoint.every_n_steps=2", f"hydra.run.dir={run_dir}")
    assert run_entry_point(tmp_path, *base).returncode == 0
    state = json.loads((run_dir / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["world_size"] == 1
    for change, message in (("zero=3", "zero.stage: 2 -> 3"), ("decoder.hidden_size=48", "decoder.hidden_size: 64 -> 48")):
        result = run_entry_point(tmp_path, *base, "train.max_steps=4", "resume=auto", "resume.allow_config_change=true",
                                 change)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert message in result.stderr and "cannot load" in result.stderr, result.stderr[-3000:]

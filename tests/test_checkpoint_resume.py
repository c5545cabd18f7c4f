"""Checkpoints, resume and stop signals through the real entry point (`python -m dsvl_exp.train`).

One uninterrupted 12-step run is the reference; a second run of the same config is stopped by
SIGTERM, resumed, SIGKILLed, resumed again, and must log the same losses, learning rates and
eval numbers bit for bit (CPU, fp32, ZeRO-3, length-grouped sampler)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import read_metrics, run_train, start_cli, train_command

pytestmark = pytest.mark.slow

# 64 training conversations / micro-batch 8 = 8 steps per epoch: evals at 6 (steps), 8 (epoch), 12 (end)
RUN = ("experiment=smoke", "zero=3", "data.group_by_length=true", "train.max_steps=12", "train.log_every_n_steps=1",
       "eval.every_n_steps=6", "eval.every_n_epochs=1", "eval.max_new_tokens=2", "eval.max_conversations=4",
       "eval.monitor=eval/accuracy", "checkpoint.every_n_steps=3", "checkpoint.keep_last=2")


def comparable(run_dir: Path) -> list[dict]:
    """metrics.jsonl without wall-clock values (time, throughput)."""
    return [{k: v for k, v in m.items() if k != "time" and not k.startswith("perf/")} for m in read_metrics(run_dir)]


def start_train(run_dir: Path, *overrides: str) -> subprocess.Popen:
    return start_cli(train_command(run_dir, *overrides), cwd=run_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                     text=True)


def signal_after_step(process: subprocess.Popen, run_dir: Path, step: int, signum: int, timeout: float = 300) -> str:
    """Send `signum` once metrics.jsonl shows `step`; returns the process's output."""
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while process.poll() is None and time.monotonic() < deadline:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if any(line.endswith("}") and json.loads(line)["step"] >= step for line in lines):
            process.send_signal(signum)
            break
        time.sleep(0.01)
    output, _ = process.communicate(timeout=timeout)
    return output


def latest(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "latest").read_text()


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_train(run_dir, *RUN)
    return run_dir


def test_stopped_killed_and_resumed_run_logs_exactly_the_uninterrupted_numbers(reference_run, tmp_path):
    run_dir = tmp_path / "run"
    output = signal_after_step(start_train(run_dir, *RUN), run_dir, 2, signal.SIGTERM)
    stopped_at = json.loads((run_dir / "checkpoints" / latest(run_dir) / "trainer_state.json").read_text())["step"]
    assert 2 <= stopped_at < 12, output[-3000:]
    assert f"stopped by SIGTERM after step {stopped_at}" in output and "resume=auto" in output
    wandb_id = json.loads((run_dir / "checkpoints" / latest(run_dir) / "trainer_state.json").read_text())["wandb_run_id"]

    process = start_train(run_dir, *RUN, "resume=auto")
    output = signal_after_step(process, run_dir, 10, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL, output[-3000:]
    killed_at = max(m["step"] for m in read_metrics(run_dir))
    checkpoint_step = int(latest(run_dir).removeprefix("step-"))
    assert checkpoint_step <= killed_at < 12

    result = run_train(run_dir, *RUN, "resume=auto")
    assert f"resuming from {run_dir / 'checkpoints' / f'step-{checkpoint_step:08d}'}" in result.stdout + result.stderr
    resumed, reference = comparable(run_dir), comparable(reference_run)
    assert [m["step"] for m in resumed] == [m["step"] for m in reference]  # no step logged twice
    assert resumed == reference
    evals = [m["step"] for m in reference if "eval/loss" in m]
    assert evals == [6, 8, 12]  # every_n_steps=6, every_n_epochs=1 (8 steps per epoch), the end
    final = json.loads((run_dir / "checkpoints" / "step-00000012" / "trainer_state.json").read_text())
    assert final["wandb_run_id"] == wandb_id


def test_checkpoint_layout_best_and_keep_last(reference_run):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    checkpoints = reference_run / "checkpoints"
    evals = {m["step"]: m["eval/accuracy"] for m in read_metrics(reference_run) if "eval/accuracy" in m}
    best_step = max(evals, key=lambda step: (evals[step], -step))  # maximised; the first of equals
    assert latest(reference_run) == "step-00000012"
    assert os.readlink(checkpoints / "best") == f"step-{best_step:08d}"
    # keep_last=2 of the saves at 3, 6, 9, 12 (and the bests at eval steps), plus best
    assert sorted(p.name for p in checkpoints.glob("step-*")) == sorted({"step-00000009", "step-00000012",
                                                                         f"step-{best_step:08d}"})
    assert not list(checkpoints.glob(".staging-*"))
    state = json.loads((checkpoints / "best" / "trainer_state.json").read_text())
    assert state["step"] == best_step and state["best_value"] == evals[best_step] and state["monitor"] == "eval/accuracy"
    assert {"epoch", "batches_into_epoch", "data_sha256", "wandb_run_id"} <= state.keys()
    assert (checkpoints / "best" / "config.yaml").read_text().count("group_by_length: true") == 1
    rng = json.loads((checkpoints / "best" / "rank_state_0.json").read_text())["rng"]
    assert set(rng) >= {"python", "numpy", "torch"}
    final = get_fp32_state_dict_from_zero_checkpoint(str(checkpoints), tag="step-00000012")
    best = get_fp32_state_dict_from_zero_checkpoint(str(checkpoints), tag="best")
    assert final.keys() == best.keys() and len(final) > 10
    assert (best_step == 12) != any(not (final[k] == best[k]).all() for k in final)
    # checkpoint.export: <run>/export from the final weights, <run>/best from the best checkpoint
    from safetensors.torch import load_file

    for folder, weights in (("export", final), ("best", best)):
        exported = load_file(reference_run / folder / "model.safetensors")
        shared = exported.keys() & weights.keys()
        assert len(shared) > 10 and all((exported[k] == weights[k]).all() for k in shared), folder


def test_fresh_run_refuses_a_used_run_directory_and_resume_refuses_a_changed_config(reference_run, tmp_path):
    with pytest.raises(AssertionError, match=r"already holds a run .*resume=auto"):
        run_train(reference_run, *RUN)
    copy = tmp_path / "copy"
    shutil.copytree(reference_run, copy, symlinks=True)
    with pytest.raises(AssertionError, match=r"config differs .*optim\.lr: 0\.001 -> 0\.002; seed: 0 -> 1\..*allow_config_change"):
        run_train(copy, *RUN, "resume=auto", "optim.lr=0.002", "seed=1")
    assert comparable(copy) == comparable(reference_run)  # nothing touched
    # a moved cache directory computes the same run: the resume goes on (as `diff` calls it volatile)
    run_train(copy, *RUN, "resume=auto", f"data.cache_dir={tmp_path / 'moved-cache'}")
    assert (tmp_path / "moved-cache").is_dir()
    assert [m for m in comparable(copy) if "train/loss" in m] == [m for m in comparable(reference_run) if "train/loss" in m]


def test_bad_data_fails_before_any_model_is_built(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "s1", "images": ["missing.png"], "rounds": [{"question": "<image>\\nq", "answer": "a"}]}\n')
    with pytest.raises(AssertionError, match=r"d\.jsonl:1: image file not found") as failure:
        run_train(tmp_path / "run", "data=native", f"data.train.0.path={data}", f"data.eval.0.path={data}")
    assert "Instantiating vision" not in str(failure.value)
    assert not (tmp_path / "run" / "parameters.json").exists()  # written as soon as the model exists


def test_nonfinite_loss_stops_naming_step_and_samples_and_keeps_the_good_checkpoint(tmp_path):
    # lr 1e30 without warm-up: step 1 blows the weights up, step 2's loss is NaN
    run_dir = tmp_path / "run"
    with pytest.raises(AssertionError, match=r"non-finite loss \(nan\) at step 2 .*sample ids: \['train-\d+'") as failure:
        run_train(run_dir, "experiment=smoke", "optim.lr=1e30", "optim.warmup_steps=0", "checkpoint.every_n_steps=1",
                  "eval.generation=false", "eval.monitor=eval/loss")
    assert "train.on_nonfinite=skip" in str(failure.value)
    assert latest(run_dir) == "step-00000001" and not (run_dir / "checkpoints" / "step-00000002").exists()


@pytest.mark.multiprocess
def test_two_ranks_stop_on_sigterm_save_both_shards_and_resume(tmp_path):
    """launcher.nproc_per_node=2: the launcher forwards SIGTERM, both ranks finish the same step,
    write their ZeRO-3 shards and RNG states, and the run exits 0; resume=auto completes it
    without logging a step twice. (Measured once: the resumed 8-step run's numbers equal an
    uninterrupted 2-rank run's bit for bit.)"""
    overrides = ("experiment=smoke", "zero=3", "launcher.nproc_per_node=2", "train.micro_batch_size=4",
                 "train.max_steps=8", "train.log_every_n_steps=1", "eval.every_n_steps=4", "eval.max_new_tokens=2",
                 "eval.max_conversations=4", "checkpoint.every_n_steps=4")
    run_dir = tmp_path / "run"
    process = start_train(run_dir, *overrides)
    output = signal_after_step(process, run_dir, 2, signal.SIGTERM)
    assert process.returncode == 0, output[-4000:]
    assert "resume=auto" in output
    stopped = run_dir / "checkpoints" / latest(run_dir)
    assert int(stopped.name.removeprefix("step-")) < 8
    assert {p.name for p in stopped.glob("*rank*")} >= {"rank_state_0.json", "rank_state_1.json",
                                                        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                                        "zero_pp_rank_1_mp_rank_00_optim_states.pt"}
    run_train(run_dir, *overrides, "resume=auto")
    steps = [m["step"] for m in read_metrics(run_dir) if "train/loss" in m]
    assert steps == list(range(1, 9))
    assert latest(run_dir) == "step-00000008"

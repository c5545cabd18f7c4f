"""A run is never lost: checkpoints trusted only with their completion marker, resume=auto
without `latest`, truncated checkpoint files, a disk that fills during a save, and the lock that
keeps two runs out of one run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsvl_exp.training import checkpoint as checkpoints
from dsvl_exp.training.resume import ResumeError, find_checkpoint
from helpers import read_metrics, run_cli, run_train, start_cli, train_command


def fake_checkpoint(checkpoint_dir: Path, step: int, complete: bool = True) -> Path:
    folder = checkpoint_dir / checkpoints.tag_for(step)
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"w" * 100)
    (folder / checkpoints.TRAINER_STATE).write_text(json.dumps({"step": step}))
    if complete:
        checkpoints.write_complete_marker(folder, step)
    return folder


# ---- item 1: `latest` missing or dangling -----------------------------------------------------
def test_resume_auto_without_latest_takes_the_newest_complete_checkpoint(tmp_path, caplog):
    for step in (2, 4):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 6, complete=False)  # copied in by hand, never finished: not trusted
    assert find_checkpoint("auto", tmp_path) == tmp_path / "step-00000004"
    assert "latest is missing; resuming from the newest complete checkpoint" in caplog.text
    (tmp_path / "latest").write_text("step-00000009")
    assert find_checkpoint("auto", tmp_path) == tmp_path / "step-00000004"
    assert "names 'step-00000009', which does not exist" in caplog.text


def test_resume_auto_refuses_a_directory_whose_checkpoints_are_all_incomplete(tmp_path):
    fake_checkpoint(tmp_path, 2, complete=False)
    with pytest.raises(ResumeError, match=r"no complete checkpoint.*step-00000002: it has no checkpoint_complete.json"
                                          r".*Nothing was changed"):
        find_checkpoint("auto", tmp_path)
    assert find_checkpoint("auto", tmp_path / "empty") is None  # no checkpoints at all: a first start


# ---- item 3: a truncated checkpoint file ------------------------------------------------------
def test_truncated_file_is_named_and_the_complete_checkpoint_offered(tmp_path, caplog):
    fake_checkpoint(tmp_path, 2)
    broken = fake_checkpoint(tmp_path, 4)
    (tmp_path / "latest").write_text("step-00000004")
    (broken / "mp_rank_00_model_states.pt").write_bytes(b"w" * 10)
    with pytest.raises(ResumeError, match=r"mp_rank_00_model_states.pt is 10 bytes, 100 when it was saved.*"
                                          r"resume=.*step-00000002"):
        find_checkpoint(str(broken), tmp_path)
    assert find_checkpoint("auto", tmp_path) == tmp_path / "step-00000002"
    assert "names step-00000004, but" in caplog.text and "mp_rank_00_model_states.pt is 10 bytes" in caplog.text


# ---- items 1 and 3 through the real entry point -----------------------------------------------
RUN = ("experiment=smoke", "checkpoint.every_n_steps=2", "checkpoint.keep_last=null", "eval.every_n_steps=100",
       "train.log_every_n_steps=1")


def train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_train(run_dir, *overrides, check=False)


@pytest.mark.slow
def test_resume_auto_survives_a_deleted_latest_and_a_truncated_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    run_train(run_dir, *RUN, "train.max_steps=4")
    checkpoint_dir = run_dir / "checkpoints"
    (checkpoint_dir / "latest").unlink()
    result = train(run_dir, *RUN, "train.max_steps=6", "resume=auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "latest is missing; resuming from the newest complete checkpoint" in result.stderr + result.stdout
    assert [m["step"] for m in read_metrics(run_dir) if "train/loss" in m] == [1, 2, 3, 4, 5, 6]  # nothing dropped

    # one rank runs stage 0 (zero.single_rank): weights and optimizer state are in this one file
    states_file = checkpoint_dir / "step-00000006" / "mp_rank_00_model_states.pt"
    states_file.write_bytes(states_file.read_bytes()[:1000])
    refused = train(run_dir, *RUN, "train.max_steps=8", f"resume={checkpoint_dir / 'step-00000006'}")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "mp_rank_00_model_states.pt is 1000 bytes" in refused.stderr and f"resume={checkpoint_dir / 'step-00000004'}" in refused.stderr

    result = train(run_dir, *RUN, "train.max_steps=8", "resume=auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mp_rank_00_model_states.pt is 1000 bytes" in result.stderr + result.stdout
    assert [m["step"] for m in read_metrics(run_dir) if "train/loss" in m] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert (checkpoint_dir / "latest").read_text() == "step-00000008"


# ---- item 4: the disk fills during a save -----------------------------------------------------
DISK_FULL_RUN = """
import errno, sys, torch
from dsvl_exp import train

real_save = torch.save
def save(obj, path, *args, **kwargs):  # the second checkpoint hits a full disk half-way through a file
    if "step-00000004" in str(path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return real_save(obj, path, *args, **kwargs)
torch.save = save
sys.argv = ["dsvl_exp.train", *sys.argv[1:]]
train.main()
"""


@pytest.mark.slow
def test_a_full_disk_during_a_save_fails_cleanly_and_keeps_the_previous_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    script = tmp_path / "disk_full.py"
    script.write_text(DISK_FULL_RUN)
    result = run_cli([sys.executable, script, f"hydra.run.dir={run_dir}", "train.progress_bar=false", *RUN,
                      "train.max_steps=6"], cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not write checkpoint step-00000004" in errors[0]
    assert "No space left on device (ENOSPC" in errors[0] and "step-00000002 is intact" in errors[0]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "No space left on device" in manifest["error"]
    leftovers = [p.name for p in run_dir.rglob("*")
                 if p.name.startswith(".") and p.name not in (".hydra", ".run.lock") or ".tmp" in p.name]
    assert leftovers == []
    checkpoint_dir = run_dir / "checkpoints"
    assert checkpoints.read_latest(checkpoint_dir) == "step-00000002"
    assert checkpoints.step_tags(checkpoint_dir) == ["step-00000002"]


# ---- item 2: one run at a time in a run directory ---------------------------------------------
def test_a_held_run_directory_refuses_a_second_holder_and_names_the_first(tmp_path):
    from dsvl_exp.training.run_lock import LOCK_FILE, RunDirectoryBusy, hold_run_dir

    with hold_run_dir(tmp_path):
        with pytest.raises(RunDirectoryBusy, match=rf"{tmp_path} is in use by pid {os.getpid()} on .*hydra.run.dir"):
            with hold_run_dir(tmp_path):
                pass
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released cleanly
    with hold_run_dir(tmp_path):  # and free again
        pass


def test_the_lock_of_a_dead_process_is_taken_over_with_a_line(tmp_path, caplog):
    from dsvl_exp.training.run_lock import LOCK_FILE, hold_run_dir

    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 4194303, "host": "node7", "started_at": "t", "command": "c"}))
    with hold_run_dir(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "took over the lock of pid 4194303 on node7" in caplog.text


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_second_run_in_a_busy_run_directory_is_refused_and_the_first_goes_on(tmp_path):
    import signal
    import time

    run_dir = tmp_path / "run"
    # long enough to be still training while the second runs are refused; killed before its end
    busy_run = ("experiment=smoke", "checkpoint.every_n_steps=2", "checkpoint.keep_last=1", "eval.every_n_steps=100000",
                "train.log_every_n_steps=1")
    first = start_cli(train_command(run_dir, *busy_run, "train.max_steps=100000"), cwd=tmp_path, stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoints" / "latest").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        for extra in ((), ("resume=auto",)):
            second = train(run_dir, *busy_run, "train.max_steps=100000", *extra)
            assert second.returncode == 2, second.stderr[-3000:]
            assert f"is in use by pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None  # untouched, still training
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        first.kill()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()  # the last one may be cut by the kill
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}") and "train/loss" in line]
    assert steps and steps == sorted(set(steps))  # each step logged once
    saved_step = int((run_dir / "checkpoints" / "latest").read_text().removeprefix("step-"))
    resumed = train(run_dir, *busy_run, f"train.max_steps={saved_step + 1}", "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"took over the lock of pid {first.pid}" in resumed.stdout + resumed.stderr

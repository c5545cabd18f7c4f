"""Files someone else wrote run no code: a pickle planted in a checkpoint (export, chat, resume) or
in a shared data.cache_dir (the parsed-data snapshot) is refused or ignored; the planted payload
writes a marker file, which must never appear (and does appear under --trust-checkpoint, which
shows the plant is real)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dsvl_exp.data.build import build_conversations
from dsvl_exp.data.snapshot import snapshot_path
from helpers import run_train
from inference_fixtures import run_module


class Planted:
    """Unpickling this runs `exec`, which writes `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def plant(checkpoint: Path, marker: Path) -> None:
    states = next(checkpoint.glob("*model_states.pt"))
    payload = torch.load(states, weights_only=True)
    payload["extra"] = Planted(marker)
    torch.save(payload, states)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("untrusted") / "run"
    run_train(run_dir, "experiment=smoke", "zero=3", "train.max_steps=2", "eval.every_n_steps=null",
              "eval.generation=false", "eval.monitor=eval/loss", "eval.max_batches=1", "checkpoint.export=false",
              "launcher.omp_num_threads=1")
    return run_dir


def planted_copy(small_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    run_dir, marker = tmp_path / "colleague", tmp_path / "marker"
    shutil.copytree(small_run, run_dir, symlinks=True)
    plant(run_dir / "checkpoints" / "step-00000002", marker)
    return run_dir, marker


@pytest.mark.slow
def test_a_planted_checkpoint_pickle_never_runs_in_export_chat_or_resume(small_run, tmp_path):
    run_dir, marker = planted_copy(small_run, tmp_path)

    exported = run_module("dsvl_exp.export", run_dir, "--out", tmp_path / "out", cwd=tmp_path, check=False)
    assert exported.returncode == 2 and "--trust-checkpoint" in exported.stderr and "Traceback" not in exported.stderr
    assert "Unsupported global" in exported.stderr and not (tmp_path / "out").exists()

    script = tmp_path / "script.jsonl"
    script.write_text(json.dumps({"question": "what is it?"}) + "\n")
    chat = run_module("dsvl_exp.chat", run_dir, "--script", script, "--max-new-tokens", "2", cwd=tmp_path, check=False)
    assert chat.returncode == 2 and "refused to load the checkpoint" in chat.stderr and "Traceback" not in chat.stderr

    with pytest.raises(AssertionError, match="refused to load the checkpoint"):
        run_train(run_dir, "experiment=smoke", "zero=3", "train.max_steps=3", "eval.every_n_steps=null",
                  "eval.generation=false", "eval.monitor=eval/loss", "eval.max_batches=1", "checkpoint.export=false",
                  "launcher.omp_num_threads=1", "resume=auto")
    assert not marker.exists()

    # the flag that says what it means: the same files then do run the planted code
    run_module("dsvl_exp.export", run_dir, "--out", tmp_path / "out", "--trust-checkpoint", cwd=tmp_path)
    assert marker.read_text() == "code ran" and (tmp_path / "out" / "config.json").is_file()


@pytest.mark.slow
def test_an_own_checkpoint_exports_weights_only_and_matches_the_trusted_export(small_run, tmp_path):
    run_module("dsvl_exp.export", small_run, "--out", tmp_path / "safe", cwd=tmp_path)
    run_module("dsvl_exp.export", small_run, "--out", tmp_path / "trusted", "--trust-checkpoint", cwd=tmp_path)

    safe = load_file(tmp_path / "safe" / "model.safetensors")
    trusted = load_file(tmp_path / "trusted" / "model.safetensors")
    assert safe.keys() == trusted.keys() and len(safe) > 10
    assert all(torch.equal(safe[k], trusted[k]) for k in safe)


def test_a_pickle_in_the_shared_data_cache_is_never_unpickled(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"c{k}", "rounds": [{"question": f"q{k}", "answer": "a"}]}) + "\n"
                            for k in range(4)))
    spec = {"format": "native", "path": str(data)}
    cache, marker = tmp_path / "shared-cache", tmp_path / "marker"
    first = build_conversations(None, [spec], [], cache_dir=str(cache))
    written = snapshot_path(cache, spec, data, 8)
    assert written.is_file() and json.loads(written.read_text())["conversations"][0][0] == "c0"

    for target in (written, written.with_suffix(".pkl")):  # over the snapshot, and where a pickle used to be
        target.write_bytes(pickle.dumps(Planted(marker)))
    again = build_conversations(None, [spec], [], cache_dir=str(cache))
    assert not marker.exists()
    assert again.train == first.train and json.loads(written.read_text())["version"] == 2  # parsed again, rewritten

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
    # whoever plants a pickle also rewrites the completion marker's sizes: it is no signature
    from dsvl_exp.training.checkpoint import COMPLETE_MARKER, write_complete_marker

    step = json.loads((checkpoint / COMPLETE_MARKER).read_text())["step"]
    (checkpoint / COMPLETE_MARKER).unlink()
    write_complete_marker(checkpoint, step)


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


# ---- 14: the interactive chat keeps its session ------------------------------------------------
def test_interactive_chat_answers_bad_input_with_an_error_line_and_keeps_the_session(tokenizer, tmp_path, monkeypatch):
    import io
    import random

    from conftest import build_tiny_model
    from dsvl_exp.chat import interactive
    from dsvl_exp.data.synthetic import draw_shape
    from dsvl_exp.inference.generation import GenerationSettings
    from dsvl_exp.inference.loading import wrap_model
    from dsvl_exp.inference.session import ChatSession
    from test_bad_records import png_header

    picture = tmp_path / "red circle.png"
    draw_shape("circle", "red", 32, random.Random(0)).save(picture)
    bomb = png_header(tmp_path / "bomb.png", 20000, 20000)
    lines = iter([f'/image "{picture}', f"/image {bomb}", f"/image {tmp_path}", f'/image "{picture}"',
                  f"/image {bomb}", "what is it?", "/images", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    session = ChatSession(wrap_model(build_tiny_model(tokenizer), tokenizer, max_images=3), GenerationSettings(max_new_tokens=2))
    out = io.StringIO()
    interactive(session, out)
    text = out.getvalue()
    assert "error: /image " in text and "no closing quotation" in text
    assert text.count("image too large to decode safely") == 2 and "image path is a directory" in text
    assert "(attached as image 1)" in text and "Assistant: " in text
    assert len(session.rounds) == 1 and session.images == [str(picture)]  # the bad lines joined nothing
    assert "Image 1: " in text and str(picture) in text


def test_chat_history_is_kept_in_the_users_state_dir(tmp_path, monkeypatch):
    readline = pytest.importorskip("readline")
    from dsvl_exp.inference.line_editing import history_path, line_history

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert history_path() == tmp_path / "state" / "dsvl_exp" / "chat_history"
    with line_history() as path:
        readline.add_history("/image a.png")
        readline.add_history("what colour is it?")
    assert path.read_text().splitlines()[-2:] == ["/image a.png", "what colour is it?"]
    assert path.stat().st_mode & 0o077 == 0
    with line_history():  # the next session starts with it
        assert [readline.get_history_item(i) for i in (1, 2)] == ["/image a.png", "what colour is it?"]
        readline.add_history("/quit")
    assert path.read_text().splitlines()[-1] == "/quit"


# ---- 15: no credentials in the manifest --------------------------------------------------------
def test_credentials_inside_recorded_values_are_redacted():
    from dsvl_exp.repro.environment import redact, safe_environment

    kept = safe_environment({
        "WANDB_BASE_URL": "https://alice:hunter2@wandb.corp.example",
        "HF_ENDPOINT": "http://proxyuser:s3cret@proxy:3128/hf",
        "DSVL_DB": "postgresql://bob:pw0rd@db:5432/runs?sslmode=require&password=pw0rd",
        "DSVL_OPTS": "host=db password=pw0rd user=bob",
        "HF_TOKEN": "hf_abc", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"})
    assert kept == {"DSVL_DB": "postgresql://***@db:5432/runs?sslmode=require&password=***",
                    "DSVL_OPTS": "host=db password=*** user=bob", "HF_ENDPOINT": "http://***@proxy:3128/hf",
                    "OMP_NUM_THREADS": "1", "WANDB_BASE_URL": "https://***@wandb.corp.example", "WANDB_MODE": "offline"}
    assert redact("data.data_path=s3://key:secret@bucket/x") == "data.data_path=s3://***@bucket/x"
    assert redact("train.max_steps=10") == "train.max_steps=10"


def test_include_diff_false_keeps_only_the_diff_hash(tmp_path, monkeypatch):
    from dsvl_exp.repro import environment

    real_git = environment._git

    def dirty_git(repo, *args):
        return "+API_KEY = 'abc'\n" if args[:1] == ("diff",) else real_git(repo, *args)

    monkeypatch.setattr(environment, "_git", dirty_git)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    kept = environment.code_version(tmp_path / "a")
    left_out = environment.code_version(tmp_path / "b", include_diff=False)
    if kept.get("git") == environment.NOT_A_GIT_CHECKOUT:
        pytest.skip("not a git checkout")
    assert (tmp_path / "a" / environment.DIFF_FILE).read_text() == "+API_KEY = 'abc'\n"
    assert left_out["git"]["diff_file"] is None and not (tmp_path / "b" / environment.DIFF_FILE).exists()
    assert left_out["git"]["diff_sha256"] == kept["git"]["diff_sha256"] is not None

    from conftest import compose_config
    from dsvl_exp.repro.manifest import begin_manifest

    config = compose_config("experiment=smoke", "manifest.include_diff=false")
    assert config.manifest.include_diff is False
    (tmp_path / "run").mkdir()
    begin_manifest(tmp_path / "run", {"manifest": {"include_diff": False}}, argv=["train", "x=https://u:pw@h"])
    assert not (tmp_path / "run" / environment.DIFF_FILE).exists()
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["command"] == ["train", "x=https://***@h"]

"""What the inference commands print for the user's mistakes, and the Gradio page's image labels."""

from __future__ import annotations

import socket

import pytest

from helpers import run_module, subprocess_env


def test_a_missing_chat_image_is_named_without_sample_wording(tmp_path):
    from dsvl_exp.inference.images import ImageCache
    from dsvl_exp.inference.loading import LoadedModel
    from dsvl_exp.inference.session import ChatError, ChatSession

    session = ChatSession(LoadedModel(model=None, tokenizer=None, template=None, images=ImageCache(None)))
    with pytest.raises(ChatError) as raised:
        session.check_round("What colour?", [str(tmp_path / "nowhere.png")])
    assert str(raised.value) == f"image file not found: {tmp_path / 'nowhere.png'}"


def test_serve_on_a_busy_port_says_which_flag_to_change(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_module("dsvl_exp.serve", tmp_path, "--port", port, timeout=120, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: port {port} on 127.0.0.1 is in use: pass another with --port "
                                     f"(e.g. --port {port + 1}), or stop the program that holds it")
    assert "serving" not in result.stdout


def test_the_page_labels_each_uploaded_image_with_its_number():
    from dsvl_exp.serve import image_messages

    assert image_messages(2, ["a.png", "b.png"]) == [
        {"role": "user", "content": "Image 2"}, {"role": "user", "content": {"path": "a.png", "alt_text": "Image 2"}},
        {"role": "user", "content": "Image 3"}, {"role": "user", "content": {"path": "b.png", "alt_text": "Image 3"}},
    ]


@pytest.mark.slow
def test_chat_script_stdout_is_json_lines_also_when_it_exports_a_checkpoint_first(tmp_path):
    import json

    from helpers import run_train

    run_dir = tmp_path / "run"
    run_train(run_dir, "experiment=smoke", "train.max_steps=2", "eval.generation=false", "eval.monitor=eval/loss",
              "checkpoint.export=false", "eval.max_batches=1",
              "zero.single_rank=as_configured")  # ZeRO-2 shards: chat consolidates them through zero_to_fp32
    assert not (run_dir / "export").exists() and (run_dir / "checkpoints" / "latest").is_file()
    script = tmp_path / "rounds.jsonl"
    script.write_text('{"question": "What colour is it?"}\n{"question": "And the shape?"}\n')
    result = run_module("dsvl_exp.chat", run_dir, "--script", script, "--max-new-tokens", "2", cwd=tmp_path,
                        env=subprocess_env(DSVL_CACHE_DIR=str(tmp_path)))
    rounds = [json.loads(line) for line in result.stdout.splitlines()]  # every line is JSON
    assert [r["round"] for r in rounds] == [1, 2]
    assert "Reconstructed fp32 state dict" in result.stderr  # zero_to_fp32 printed it on stdout before

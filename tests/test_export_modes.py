"""An export folder is readable by everyone the umask allows (a shared file system), and the run
summary leaves out what the run never measured."""

from __future__ import annotations

import os
import stat

from conftest import build_tiny_model


def test_every_exported_file_follows_the_umask(tokenizer, tmp_path):
    from dsvl_exp.models.pretrained import save_pretrained

    previous = os.umask(0o022)
    try:
        out = save_pretrained(build_tiny_model(tokenizer), tmp_path / "export", tokenizer=tokenizer)
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in [out, *out.rglob("*")]}
    assert modes["model.safetensors"] == 0o644 and modes["export"] == 0o755
    assert set(modes.values()) <= {0o644, 0o755}, modes


def test_the_summary_leaves_out_metrics_the_run_did_not_log():
    from dsvl_exp.training.reporting import summary_line

    assert summary_line({"train/loss": 0.5, "steps": 3}) == "final train loss 0.5000 | steps 3"
    assert summary_line({"train/loss": 0.5, "eval/loss": 0.25, "eval/accuracy": 0.75, "steps": 3}) == (
        "final train loss 0.5000 | eval loss 0.2500 | eval answer accuracy 0.7500 | steps 3")

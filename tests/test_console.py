"""One error system: every command ends through dsvl_exp.console with the documented exit statuses,
every user-facing error class is a UserError, and `--help` answers without importing torch."""

from __future__ import annotations

import sys

import pytest

from dsvl_exp.console import EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED, EXIT_USER_ERROR, exit_status
from dsvl_exp.errors import UserError
from helpers import run_cli, run_module

COMMANDS = ("train", "chat", "evaluate", "serve", "export", "diff", "reproduce", "sweep_report")


def test_exit_statuses_and_what_is_printed(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert exit_status(lambda: 0) == 0 and exit_status(lambda: None) == 0 and exit_status(lambda: 1) == 1

    def user_mistake():
        raise UserError("data.train.0.path=x.jsonl: no such file")

    assert exit_status(user_mistake) == EXIT_USER_ERROR
    assert capsys.readouterr().err == "error: data.train.0.path=x.jsonl: no such file\n"

    def bug():
        raise KeyError("internal")

    assert exit_status(bug) == EXIT_INTERNAL_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and "internal error: KeyError: 'internal'. This is a bug" in err

    def interrupted():
        raise KeyboardInterrupt

    assert exit_status(interrupted) == EXIT_INTERRUPTED


def test_hydra_full_error_adds_the_traceback_to_user_errors(capsys, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")

    def user_mistake():
        raise UserError("bad value")

    assert exit_status(user_mistake) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: bad value\n")


def test_every_user_facing_error_class_is_a_user_error():
    from dsvl_exp.data.errors import DataError
    from dsvl_exp.inference.cli import UsageError
    from dsvl_exp.inference.loading import ModelPathError
    from dsvl_exp.inference.session import ChatError
    from dsvl_exp.models.reference_import import ReferenceImportError
    from dsvl_exp.repro.compare import RunError
    from dsvl_exp.training.checkpoint import CheckpointError
    from dsvl_exp.training.exporting import ExportError
    from dsvl_exp.training.resume import ResumeError
    from dsvl_exp.training.run_lock import RunDirectoryBusy

    for kind in (ExportError, RunError, UsageError, ChatError, ModelPathError, ReferenceImportError, DataError,
                 CheckpointError, ResumeError, RunDirectoryBusy):
        assert issubclass(kind, UserError), kind


HELP_PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_module("dsvl_exp." + sys.argv[0], run_name="__main__")
except SystemExit as end:
    assert end.code in (0, None), end.code
heavy = sorted(name for name in ("torch", "transformers", "deepspeed", "peft", "gradio") if name in sys.modules)
print("heavy:", ",".join(heavy))
"""


@pytest.mark.parametrize("command", COMMANDS)
def test_help_answers_without_importing_torch(command):
    result = run_cli([sys.executable, "-c", HELP_PROBE, command], timeout=120)
    assert "usage" in result.stdout.lower() or "python -m dsvl_exp.train" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "heavy:", result.stdout[-500:]


@pytest.mark.parametrize("command, arguments, message", [
    ("diff", ["nowhere_a", "nowhere_b"], "nowhere_a"),
    ("sweep_report", ["nowhere"], "no jobs with manifest.json"),
    ("export", ["--from-dsvl", "missing.bin", "--vision", "v", "--decoder", "d", "--projection", "baseline",
                "--attention", "causal", "--out", "o"], "--from-dsvl missing.bin: no such file"),
])
def test_user_errors_of_every_command_exit_2_with_one_error_line(tmp_path, command, arguments, message):
    result = run_module(f"dsvl_exp.{command}", *arguments, cwd=tmp_path, timeout=300, check=False)
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]

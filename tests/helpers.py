"""Shared helpers for tests: the one environment and the one runner for every process a test starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# What a process group started inside a test leaves in os.environ (training/distributed.py sets
# them): a child given them would take itself for a rank of an external launcher.
RENDEZVOUS_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                        "MASTER_PORT", "TORCHELASTIC_RUN_ID")

# Offline, no W&B, one thread: what conftest.py sets for the test process, given to every child too.
TEST_VARIABLES = {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                  "TOKENIZERS_PARALLELISM": "false", "GRADIO_ANALYTICS_ENABLED": "False"}


def subprocess_env(*, drop: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    """The environment of a child process: this process's (which holds the session's cache and
    state dirs), the package of this checkout, the test variables, no rendezvous variables and no
    HYDRA_FULL_ERROR (the user's one-line errors are asserted). `drop` removes names, `extra` sets them.
    (Not named test_*: a test module importing it would collect it as a test.)"""
    env = {name: value for name, value in os.environ.items() if name not in RENDEZVOUS_VARIABLES}
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(TEST_VARIABLES, PYTHONPATH=str(REPO / "src"))
    for name in drop:
        env.pop(name, None)
    env.update(extra)
    return env


def run_cli(argv: list, *, cwd: Path | None = None, env: dict | None = None, timeout: int = 600, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess:
    """Run `argv` to its end (text output captured) in `env` (default subprocess_env()); with
    `check`, a non-zero exit fails the test showing the tails of stdout and stderr."""
    command = [str(part) for part in argv]
    result = subprocess.run(command, cwd=cwd, env=subprocess_env() if env is None else env, input=input,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


def run_module(module: str, *args, **options) -> subprocess.CompletedProcess:
    """`python -m module args...` through run_cli (same options)."""
    return run_cli([sys.executable, "-m", module, *args], **options)


def start_cli(argv: list, *, cwd: Path | None = None, env: dict | None = None, **popen_options) -> subprocess.Popen:
    """Start `argv` in the background in `env` (default subprocess_env()), for tests that signal,
    poll or talk to it; stdout/stderr as `popen_options` say."""
    return subprocess.Popen([str(part) for part in argv], cwd=cwd, env=subprocess_env() if env is None else env,
                            **popen_options)


def train_command(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "dsvl_exp.train", f"hydra.run.dir={run_dir}", "train.progress_bar=false", *overrides]


def run_train(run_dir: Path, *overrides: str, timeout: int = 600, module: str = "dsvl_exp.train",
              check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """A training run through the entry point into `run_dir` (started in its parent)."""
    return run_module(module, f"hydra.run.dir={run_dir}", "train.progress_bar=false", *overrides, cwd=run_dir.parent,
                      timeout=timeout, check=check, env=env)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def only_sweep_dir(cwd: Path, experiment: str = "default") -> Path:
    """The one sweep directory a multirun started in `cwd` wrote, where the README says:
    multirun/<experiment or default>/<date>/<time>."""
    [sweep] = sorted((cwd / "multirun" / experiment).glob("*/*"))
    return sweep

"""Shared helpers for tests: running the real entry point in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_train(run_dir: Path, *overrides: str, timeout: int = 600, module: str = "dsvl_exp.train") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", module, f"hydra.run.dir={run_dir}", "train.progress_bar=false", *overrides]
    result = subprocess.run(command, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def only_sweep_dir(cwd: Path, experiment: str = "default") -> Path:
    """The one sweep directory a multirun started in `cwd` wrote, where the README says:
    multirun/<experiment or default>/<date>/<time>."""
    [sweep] = sorted((cwd / "multirun" / experiment).glob("*/*"))
    return sweep

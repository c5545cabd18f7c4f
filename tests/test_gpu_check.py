"""scripts/gpu_check.sh --cpu: the GPU check's own steps, CPU-sized, so the script is known to work
before it meets a GPU (its GPU run is recorded in BENCHMARKS.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_cli, subprocess_env

REPO = Path(__file__).resolve().parents[1]
STEPS = ["pytest_gpu", "train_zero2", "train_zero3", "export", "chat", "evaluate", "bench_attention", "bench_train"]


@pytest.mark.slow
@pytest.mark.multiprocess  # one process per step
def test_gpu_check_script_runs_every_step_in_cpu_mode(tmp_path):
    out = tmp_path / "out"
    result = run_cli(["bash", REPO / "scripts" / "gpu_check.sh", "--cpu"], cwd=tmp_path,
                     env=subprocess_env(GPU_CHECK_OUT=str(out)), timeout=900)
    table = result.stdout[result.stdout.index("gpu_check on CPU (--cpu)"):].splitlines()
    rows = {line.split()[0]: line.split()[1] for line in table[2:] if line.strip()}
    assert rows == {name: "ok" for name in STEPS}
    train = next(line for line in table if line.startswith("train_zero3"))
    assert "tokens/s" in train and "MFU" in train and "mem" in train
    assert next(line for line in table if line.startswith("chat")).endswith("2 JSON answer line(s)")
    assert (out / "exported" / "config.json").exists() and (out / "eval" / "accuracy.json").exists()
    assert (out / "bench_attention.json").exists() and (out / "bench_train.json").exists()

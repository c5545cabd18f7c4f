"""Regenerate tests/golden/smoke.json: the seeded losses of `experiment=smoke` on the default
config, which tests/test_train_e2e.py asserts to a tight tolerance.

    python scripts/update_golden.py          # run it, print the old and new values, write the file

Run it only when a change is meant to alter the numbers (a new initialisation, data order,
schedule ...), and say so in the commit message. One OpenMP thread, as in the tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "smoke.json"
OVERRIDES = ["experiment=smoke", "train.progress_bar=false"]
KEYS = ("train/loss", "eval/loss", "eval/accuracy")


def run_smoke(workdir: Path, overrides: list[str]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "DSVL_CACHE_DIR": str(workdir / "cache")}
    run_dir = workdir / "run"
    subprocess.run([sys.executable, "-m", "dsvl_exp.train", *overrides, f"hydra.run.dir={run_dir}"],
                   cwd=workdir, env=env, check=True)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def golden_values(metrics: list[dict]) -> dict[str, list[list[float]]]:
    """{key: [[step, value], ...]} for the keys the golden test checks."""
    return {key: [[m["step"], m[key]] for m in metrics if key in m] for key in KEYS}


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        values = golden_values(run_smoke(Path(workdir), OVERRIDES))
    if GOLDEN.exists():
        print("old:", json.dumps(json.loads(GOLDEN.read_text())["values"]))
    print("new:", json.dumps(values))
    lines = [f'  "{key}": {json.dumps(pairs)}' for key, pairs in values.items()]
    GOLDEN.write_text('{"overrides": ' + json.dumps(OVERRIDES) + ',\n "values": {\n' + ",\n".join(lines) + "}}\n")
    print(f"wrote {GOLDEN.relative_to(REPO)}")


if __name__ == "__main__":
    main()

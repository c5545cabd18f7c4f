"""Regenerate the golden files tests/test_train_e2e.py asserts to a tight tolerance:
tests/golden/smoke.json, the seeded losses of `experiment=smoke` on the default config, and
tests/golden/accuracy.json, a seeded run long enough for a non-zero answer accuracy (the smoke
run's is 0.0 at both evaluations, so it cannot tell a broken accuracy metric from a true one).

    python scripts/update_golden.py              # run both, print the old and new values, write the files
    python scripts/update_golden.py accuracy     # only tests/golden/accuracy.json

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
GOLDEN_DIR = REPO / "tests" / "golden"
# name -> the overrides of its run. accuracy: the smoke data at a constant lr 3e-3 for 60 steps
# answers 1 then 2 of the 32 eval rounds exactly (20 steps at the default lr answer none).
RUNS = {
    "smoke": ["experiment=smoke", "train.progress_bar=false"],
    "accuracy": ["experiment=smoke", "train.progress_bar=false", "train.max_steps=60", "optim.lr=3e-3",
                 "optim.scheduler.name=constant", "eval.every_n_steps=30", "checkpoint.export=false"],
}
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


def update(name: str) -> None:
    golden, overrides = GOLDEN_DIR / f"{name}.json", RUNS[name]
    with tempfile.TemporaryDirectory() as workdir:
        values = golden_values(run_smoke(Path(workdir), overrides))
    if golden.exists():
        print("old:", json.dumps(json.loads(golden.read_text())["values"]))
    print("new:", json.dumps(values))
    lines = [f'  "{key}": {json.dumps(pairs)}' for key, pairs in values.items()]
    golden.write_text('{"overrides": ' + json.dumps(overrides) + ',\n "values": {\n' + ",\n".join(lines) + "}}\n")
    print(f"wrote {golden.relative_to(REPO)}")


def main() -> None:
    names = sys.argv[1:] or list(RUNS)
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        sys.exit(f"error: no golden run named {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    for name in names:
        update(name)


if __name__ == "__main__":
    main()

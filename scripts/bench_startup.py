"""Start-up: from the command to the first optimizer step, and the whole command.

    python scripts/bench_startup.py [--repeats 3] [--json PATH] [-- extra overrides]

Runs `python -m dsvl_exp.train experiment=smoke train.log_every_n_steps=1` with W&B offline in a
fresh temporary directory, `--repeats` times. The first optimizer step's time is the `time` of
the step-1 record in metrics.jsonl (written right after that step), measured from just before
the process starts. Also times `import torch, transformers, deepspeed` alone, and prints the
ten slowest imports of the train command (`python -X importtime`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import cpu_description, write_json

ROOT = Path(__file__).resolve().parent.parent


def environment() -> dict:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("DSVL_CACHE_DIR", tempfile.mkdtemp(prefix="dsvl_bench_cache_"))
    return env


def one_run(extra: list[str], env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="dsvl_startup_") as folder:
        run_dir = Path(folder) / "run"
        command = [sys.executable, "-m", "dsvl_exp.train", "experiment=smoke", "train.log_every_n_steps=1",
                   "train.progress_bar=false", f"hydra.run.dir={run_dir}", *extra]
        start = time.time()
        subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True)
        total = time.time() - start
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        first_step = next(r["time"] for r in records if r["step"] == 1 and "train/loss" in r)
        last_step = max(r["time"] for r in records)
        return {"first_step_s": first_step - start, "total_s": total, "after_last_record_s": start + total - last_step}


def import_time(env: dict) -> float:
    start = time.time()
    subprocess.run([sys.executable, "-c", "import torch, transformers, deepspeed"], env=env, check=True, capture_output=True)
    return time.time() - start


def slowest_imports(env: dict, extra: list[str], count: int = 10) -> list[tuple[float, str]]:
    with tempfile.TemporaryDirectory(prefix="dsvl_startup_") as folder:
        command = [sys.executable, "-X", "importtime", "-m", "dsvl_exp.train", "experiment=smoke",
                   "train.max_steps=1", "eval.every_n_steps=null", "train.progress_bar=false", f"hydra.run.dir={folder}/run", *extra]
        stderr = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True).stderr
    rows = []
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|(\s*)(\S+)", line)
        if match and len(match.group(2)) <= 2:  # top-level imports (cumulative time)
            rows.append((int(match.group(1)) / 1e6, match.group(3)))
    return sorted(rows, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("extra", nargs="*", help="extra overrides for the train command")
    args = parser.parse_args()
    env = environment()
    print(cpu_description())
    one_run(args.extra, env)  # warm: synthetic data cached, compiled bytecode, page cache
    runs, imports = [], []
    for _ in range(args.repeats):
        runs.append(one_run(args.extra, env))
        imports.append(import_time(env))
    medians = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    medians["import_torch_transformers_deepspeed_s"] = statistics.median(imports)
    for key, value in medians.items():
        print(f"{key:40s} {value:6.2f} s")
    slow = slowest_imports(env, args.extra)
    print("slowest top-level imports (cumulative s):")
    for seconds, module in slow:
        print(f"  {seconds:6.2f}  {module}")
    write_json(args.json, "bench_startup", {"args": vars(args), "medians": medians, "runs": runs, "slowest_imports": slow})


if __name__ == "__main__":
    main()

"""Start-up: from the command to the first optimizer step, and the whole command.

    python scripts/bench_startup.py [--repeats 3] [--wandb-modes disabled offline] [--src DIR] [--json PATH]
        [-- extra overrides]

Runs `python -m dsvl_exp.train experiment=smoke train.log_every_n_steps=1` in a fresh temporary
directory, `--repeats` times for each W&B mode (`WANDB_MODE=disabled`: no W&B at all, what the
tests run; `offline`: W&B starts and writes its files, what a user without an API key gets),
alternated. `--src` runs another checkout's package (its `src` folder), for a before/after pair. The first optimizer step's time is the `time` of
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

from bench_common import print_machine_header, write_json

ROOT = Path(__file__).resolve().parent.parent


def environment(src: Path = ROOT / "src", wandb_mode: str = "offline") -> dict:
    env = {**os.environ, "WANDB_MODE": wandb_mode, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(src) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("DSVL_CACHE_DIR", tempfile.mkdtemp(prefix="dsvl_bench_cache_"))
    return env


def package_location(env: dict) -> str:
    return subprocess.run([sys.executable, "-c", "import dsvl_exp; print(dsvl_exp.__file__)"], env=env,
                          capture_output=True, text=True, check=True).stdout.strip()


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


def import_time(env: dict, code: str = "import torch, transformers, deepspeed") -> float:
    start = time.time()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    return time.time() - start


# the engine's way when the package has it (training/deepspeed_import.py: without MLflow), else plain
PROJECT_IMPORT = ("import torch, transformers\ntry:\n    from dsvl_exp.training.deepspeed_import import import_deepspeed\n"
                  "except ImportError:\n    import deepspeed\nelse:\n    import_deepspeed()")


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
    parser.add_argument("--wandb-modes", nargs="+", choices=["disabled", "offline"], default=["disabled", "offline"])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the package's source folder (default: this checkout's)")
    parser.add_argument("--json")
    parser.add_argument("extra", nargs="*", help="extra overrides for the train command")
    args = parser.parse_args()
    envs = {mode: environment(args.src.resolve(), mode) for mode in args.wandb_modes}
    print_machine_header()
    print("package:", package_location(envs[args.wandb_modes[0]]))
    for env in envs.values():
        one_run(args.extra, env)  # warm: synthetic data cached, compiled bytecode, page cache
    runs, imports, project_imports = {mode: [] for mode in envs}, [], []
    for _ in range(args.repeats):
        for mode, env in envs.items():
            runs[mode].append(one_run(args.extra, env))
        imports.append(import_time(envs[args.wandb_modes[0]]))
        project_imports.append(import_time(envs[args.wandb_modes[0]], PROJECT_IMPORT))
    medians = {mode: {key: statistics.median(r[key] for r in mode_runs) for key in mode_runs[0]} for mode, mode_runs in runs.items()}
    for mode, values in medians.items():
        for key, value in values.items():
            print(f"WANDB_MODE={mode:9s} {key:28s} {value:6.2f} s")
    import_s = statistics.median(imports)
    project_import_s = statistics.median(project_imports)
    print(f"{'import torch, transformers, deepspeed':49s} {import_s:6.2f} s")
    print(f"{'the same, deepspeed as the engine imports it':49s} {project_import_s:6.2f} s")
    slow = slowest_imports(envs[args.wandb_modes[0]], args.extra)
    print(f"slowest top-level imports (cumulative s, WANDB_MODE={args.wandb_modes[0]}):")
    for seconds, module in slow:
        print(f"  {seconds:6.2f}  {module}")
    write_json(args.json, "bench_startup", {"args": {**vars(args), "src": str(args.src)}, "medians": medians,
                                            "import_torch_transformers_deepspeed_s": import_s,
                                            "import_as_the_engine_does_s": project_import_s, "runs": runs,
                                            "slowest_imports": slow})


if __name__ == "__main__":
    main()

"""Data-loading settings side by side on the tiny default: median training step time by setting.

    python scripts/bench_dataloader.py [--steps 60] [--rounds 2] [--settings "data.num_workers=0" "data.num_workers=1"]

Each setting is one `python -m dsvl_exp.train` run (W&B disabled, no eval, `train.max_steps`
steps, logging every 5 steps); runs of the settings alternate, `--rounds` times. The figure is the
median `perf/step_time_s` over the logged windows after the first (warm-up) one: data loading in
the main process shows up in it, start-up does not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_common import print_machine_header, write_json
from bench_startup import environment


def step_times(setting: list[str], steps: int, env: dict) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="dsvl_loader_") as folder:
        run_dir = Path(folder) / "run"
        command = [sys.executable, "-m", "dsvl_exp.train", f"train.max_steps={steps}", "train.log_every_n_steps=5",
                   "eval.every_n_steps=null", "eval.max_batches=1", "eval.generation=false", "eval.monitor=eval/loss", "train.progress_bar=false",
                   f"hydra.run.dir={run_dir}", *setting]
        subprocess.run(command, cwd=folder, env={**env, "WANDB_MODE": "disabled"}, check=True, capture_output=True)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r["perf/step_time_s"] for r in records if "perf/step_time_s" in r][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=["data.num_workers=0", "data.num_workers=1", "data.num_workers=2"])
    parser.add_argument("--json")
    args = parser.parse_args()
    env = environment()
    print_machine_header()
    samples: dict[str, list[float]] = {s: [] for s in args.settings}
    for _ in range(args.rounds):
        for setting in args.settings:
            samples[setting] += step_times(setting.split(), args.steps, env)
    medians = {s: statistics.median(v) for s, v in samples.items()}
    first = args.settings[0]
    for setting, value in medians.items():
        print(f"{setting:40s} step {value * 1e3:7.1f} ms  x {value / medians[first]:.3f}")
    write_json(args.json, "bench_dataloader", {"args": vars(args), "median_step_s": medians, "samples": samples})


if __name__ == "__main__":
    main()

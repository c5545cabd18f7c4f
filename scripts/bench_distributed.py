"""ZeRO-2 vs ZeRO-3, 1 vs 2 processes, side by side: step time, peak memory per rank, and what
each rank holds of the parameters and the optimizer (master weights + Adam state).

    python scripts/bench_distributed.py                       # tiny CLIP + a ~4M-parameter decoder
    python scripts/bench_distributed.py --steps 50 --hidden-size 1024 --nproc 1 2

Every configuration is a real run of `python -m dsvl_exp.train launcher.nproc_per_node=N zero=S`
(same per-rank micro-batch, so 2 ranks do twice the samples per step). Step time is the median
of the logged windows after the first (start-up); memory and bytes come from the ranks'
`ranks/rank-<r>.json` files. On a machine with fewer cores than ranks, times say little.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import print_machine_header

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20


def run_configuration(out: Path, zero: int, nproc: int, args) -> dict:
    run_dir = out / f"zero{zero}_np{nproc}"
    overrides = [
        f"hydra.run.dir={run_dir}", f"zero={zero}", f"launcher.nproc_per_node={nproc}",
        "experiment=smoke", "train.progress_bar=false", f"train.max_steps={args.steps}", "train.log_every_n_steps=5",
        f"train.micro_batch_size={args.micro_batch_size}", "optim.warmup_steps=0",
        "eval.generation=false", "eval.monitor=eval/loss", "eval.every_n_steps=null", "eval.max_batches=1",
        f"data.synthetic.num_train={max(64, args.micro_batch_size * 2 * 8)}",
        f"decoder.hidden_size={args.hidden_size}", f"decoder.num_layers={args.num_layers}",
        f"decoder.num_heads={args.hidden_size // 64}", f"decoder.num_kv_heads={args.hidden_size // 64}",
        f"decoder.intermediate_size={args.hidden_size * 11 // 4}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "DSVL_CACHE_DIR": os.environ.get("DSVL_CACHE_DIR", str(out / "cache"))}
    env.pop("OMP_NUM_THREADS", None)  # the launcher shares the cores out between ranks
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dsvl_exp.train", *overrides], cwd=out, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"zero={zero} nproc={nproc} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [m for m in metrics if "perf/step_time_s" in m][1:]
    ranks = [json.loads((run_dir / "ranks" / f"rank-{r}.json").read_text()) for r in range(nproc)]
    return {
        "zero": zero,
        "nproc": nproc,
        "step_time_s": statistics.median(m["perf/step_time_s"] for m in windows),
        "samples_per_s": statistics.median(m["perf/samples_per_s"] for m in windows),
        "final_loss": [m for m in metrics if "train/loss" in m][-1]["train/loss"],
        "peak_rss_mib": max(r["peak_rss_bytes"] for r in ranks) / MIB,
        "param_mib": max(r["parameter_bytes"] for r in ranks) / MIB,
        "master_mib": max(r["master_bytes"] for r in ranks) / MIB,
        "adam_mib": max(r["state_bytes"] for r in ranks) / MIB,
        "total_params": sum(p["numel"] for p in ranks[0]["parameters"].values()),
        "wall_s": time.perf_counter() - started,
    }


def print_table(rows: list[dict]) -> None:
    print(f"\nmodel: {rows[0]['total_params'] / 1e6:.1f}M parameters, fp32; per-rank values are the largest over ranks\n")
    header = ("ZeRO", "procs", "step s", "samples/s", "peak RSS MiB/rank", "params MiB/rank",
              "fp32 master MiB/rank", "Adam state MiB/rank", "params+optim MiB/rank", "final loss", "run wall s")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" for _ in header) + "|")
    for r in rows:
        held = r["param_mib"] + r["master_mib"] + r["adam_mib"]
        cells = (r["zero"], r["nproc"], f"{r['step_time_s']:.3f}", f"{r['samples_per_s']:.1f}", f"{r['peak_rss_mib']:.0f}",
                 f"{r['param_mib']:.1f}", f"{r['master_mib']:.1f}", f"{r['adam_mib']:.1f}", f"{held:.1f}",
                 f"{r['final_loss']:.4f}", f"{r['wall_s']:.0f}")
        print("| " + " | ".join(str(c) for c in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zero", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--micro-batch-size", type=int, default=4, help="per rank")
    parser.add_argument("--hidden-size", type=int, default=256, help="decoder width (multiple of 64)")
    parser.add_argument("--num-layers", type=int, default=4, help="decoder layers")
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temp dir)")
    args = parser.parse_args()
    print_machine_header()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for zero in args.zero:
        for nproc in args.nproc:
            print(f"zero={zero} nproc={nproc} ...", flush=True)
            rows.append(run_configuration(out, zero, nproc, args))
    print_table(rows)
    (out / "bench.json").write_text(json.dumps(rows, indent=1))
    print(f"\nruns and bench.json in {out}")


if __name__ == "__main__":
    main()

"""Data start-up at scale: seconds from "read the data config" to "loaders can start", cold
(no length cache) and warm (cache from the previous run), on 1 and 2 ranks.

A synthetic native JSONL index of N conversations (default 1,000,000) is written once; its
images are a few shared files, as a large mix shows the same COCO image many times. What each
rank times is what the recipe does before the model: build_conversations (read, image checks,
concatenation, split), the max_seq_len fit (round lengths: computed split across ranks and
cached, or loaded), the per-epoch draws and, on rank 0, the data fingerprint.

    python scripts/bench_data_startup.py                      # 1M conversations, ranks 1 and 2
    python scripts/bench_data_startup.py --conversations 20000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = ("What is in the image?", "Describe the scene in detail.", "How many objects are there?",
             "What colour is the largest shape, and where is it?", "Is anything unusual here?")


def write_index(root: Path, conversations: int, images: int) -> Path:
    path = root / "index.jsonl"
    if path.is_file():
        return path
    from PIL import Image

    for k in range(images):
        Image.new("RGB", (8, 8), (k * 37 % 256, k * 91 % 256, k * 53 % 256)).save(root / f"img{k}.png")
    rng = random.Random(0)
    with open(root / "index.tmp", "w") as f:
        for k in range(conversations):
            shown = [f"img{rng.randrange(images)}.png" for _ in range(rng.choice((1, 1, 1, 2)))]
            rounds = [{"question": "<image>\n" * len(shown) + rng.choice(QUESTIONS), "answer": f"It is {'very ' * rng.randrange(20)}clear (case {k})."}]
            for _ in range(rng.randrange(3)):
                rounds.append({"question": rng.choice(QUESTIONS), "answer": "Yes, " + "and so on " * rng.randrange(10)})
            f.write(json.dumps({"id": f"c{k}", "images": shown, "rounds": rounds}) + "\n")
    os.replace(root / "index.tmp", path)
    return path


def startup(index: Path, cache_dir: Path, verify_images: str) -> dict:
    """One rank's data start-up, timed by phase."""
    from dsvl_exp.data.build import build_conversations
    from dsvl_exp.data.fingerprint import data_fingerprint
    from dsvl_exp.data.length import fit_to_max_seq_len, lengths_cache_path
    from dsvl_exp.data.redraw import EpochDraws
    from dsvl_exp.data.sharding import barrier, rank_and_world
    from dsvl_exp.data.template import ChatTemplate
    from dsvl_exp.models.tokenizer import load_tokenizer

    tokenizer, template = load_tokenizer(), ChatTemplate()
    barrier()
    times, start, cpu = {}, time.perf_counter(), time.process_time()
    built = build_conversations(None, [{"format": "native", "path": str(index)}], [], eval_split=0.001,
                                verify_images=verify_images, seed=0, cache_dir=str(cache_dir))
    times["build"] = time.perf_counter() - start
    mark = time.perf_counter()
    fitted = fit_to_max_seq_len(built.train, tokenizer, template, 64, 4096, "train",
                                cache_path=lengths_cache_path(cache_dir, built.key, "train", tokenizer, template, 64))
    times["lengths"] = time.perf_counter() - mark
    mark = time.perf_counter()
    EpochDraws(built, 0, fitted.kept)
    if rank_and_world()[0] == 0:
        data_fingerprint(built.annotation_files, fitted.conversations, built.eval, template, tokenizer)
    times["draws+fingerprint"] = time.perf_counter() - mark
    barrier()
    times["total"] = time.perf_counter() - start
    times["cpu"] = time.process_time() - cpu  # what the rank itself computed: the machine's load does not inflate it
    return {"times": times, "samples": len(fitted.conversations), "length_sum": sum(fitted.lengths)}


def worker(args) -> None:
    import torch.distributed as dist

    if int(os.environ["WORLD_SIZE"]) > 1:
        dist.init_process_group("gloo")
    result = startup(Path(args.index), Path(args.cache_dir), args.verify_images)
    Path(args.result).with_suffix(f".rank{os.environ['RANK']}.json").write_text(json.dumps(result))
    if dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(ranks: int, index: Path, cache_dir: Path, result: Path, verify_images: str) -> dict:
    port = free_port()
    processes = []
    for rank in range(ranks):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        command = [sys.executable, __file__, "--worker", "--index", str(index), "--cache-dir", str(cache_dir),
                   "--result", str(result), "--verify-images", verify_images]
        processes.append(subprocess.Popen(command, env=env))
    if any(p.wait() != 0 for p in processes):
        raise SystemExit(f"a rank failed ({ranks} ranks)")
    per_rank = [json.loads(result.with_suffix(f".rank{r}.json").read_text()) for r in range(ranks)]
    if len({(r["samples"], r["length_sum"]) for r in per_rank}) != 1:
        raise SystemExit(f"ranks disagree on the data: {per_rank}")
    return {"seconds": max(r["times"]["total"] for r in per_rank), "cpu_seconds": max(r["times"]["cpu"] for r in per_rank),
            "phases": per_rank[0]["times"],
            "samples": per_rank[0]["samples"], "length_sum": per_rank[0]["length_sum"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--verify-images", default="header")
    parser.add_argument("--workdir", default=None, help="where the index and caches go (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from bench_common import print_machine_header

    print_machine_header()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_data_startup_"))
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    index = write_index(workdir, args.conversations, args.images)
    print(f"index: {args.conversations:,} conversations, {args.images} shared images ({time.perf_counter() - start:.1f} s to write)")
    figures = []
    for ranks in args.ranks:
        cache_dir = workdir / f"cache_{ranks}ranks"
        for phase in ("cold", "warm"):
            if phase == "cold" and cache_dir.exists():
                for cached in cache_dir.iterdir():
                    cached.unlink()
            row = run_ranks(ranks, index, cache_dir, workdir / f"result_{ranks}_{phase}.json", args.verify_images)
            row.update(ranks=ranks, phase=phase)
            figures.append(row)
            phases = ", ".join(f"{k} {v:.1f}" for k, v in row["phases"].items() if k not in ("total", "cpu"))
            print(f"{ranks} rank(s) {phase}: {row['seconds']:.1f} s wall, {row['cpu_seconds']:.1f} s CPU per rank  "
                  f"({phases}; {row['samples']:,} samples; load average {os.getloadavg()[0]:.1f})")
    if len({(f["samples"], f["length_sum"]) for f in figures}) != 1:
        raise SystemExit("runs disagree on the data")
    if args.json:
        Path(args.json).write_text(json.dumps({"conversations": args.conversations, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()

"""Answer evaluation suites with a trained model; write the answers and an accuracy table.

    python -m dsvl_exp.evaluate MODEL synthetic demo                   # the shipped suites
    python -m dsvl_exp.evaluate MODEL eval_data/eval_comprehensive.json --out results/
    python -m dsvl_exp.evaluate MODEL synthetic --nproc-per-node 2      # 2 ranks started from here
    python -m dsvl_exp.evaluate MODEL synthetic --device cpu            # auto (default): the GPU when there is one
    torchrun --nproc_per_node 2 -m dsvl_exp.evaluate MODEL synthetic    # 2 ranks started by torchrun

MODEL is an export folder or a run directory. A SUITE is `synthetic`, `demo`, a reference-layout
eval JSON or a native JSONL file (inference/suites.py). Round r of every conversation is answered
in one batch (chunks of --batch-size), history accumulating within each conversation;
conversations are sharded across ranks and gathered on rank 0, which writes `<suite>.jsonl`,
`<suite>.csv`, `accuracy.json` and `accuracy.md` under --out and prints the table.
Generation is greedy unless --sample is given.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dsvl_exp.console import run_command
from dsvl_exp.inference.cli import (
    UsageError,
    add_generation_arguments,
    model_command_parser,
    resolve_device,
    generation_settings,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = model_command_parser("evaluate", __doc__)
    parser.add_argument("suites", metavar="SUITE", nargs="+", help="synthetic | demo | FILE.json | FILE.jsonl")
    parser.add_argument("--out", default="eval_results", help="output folder (default ./eval_results)")
    parser.add_argument("--batch-size", type=int, default=16, help="conversations answered together (default 16)")
    parser.add_argument("--history", choices=("generated", "reference"), default="generated",
                        help="earlier rounds show the model's own answers (default) or the suite's reference answers")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="ranks to start on this machine (default 1)")
    parser.add_argument("--max-images", type=int, default=None, help="images per conversation (default: the run's limit, else 8)")
    add_generation_arguments(parser, greedy_default=True)
    parser.add_argument("--sample", dest="greedy", action="store_false", help="sample (--temperature, --top-p) instead of greedy")
    return parser.parse_args(argv)


def evaluate_rank(options: dict, omp_threads: int | None = None) -> list[dict] | None:
    """One rank: load, answer its shard, gather; rank 0 scores, writes and prints. Runs in the
    main process, in spawned elastic-launch workers and under torchrun alike."""
    import torch
    import torch.distributed as dist

    from dsvl_exp.inference.batch_eval import answer_sharded
    from dsvl_exp.inference.loading import load_model
    from dsvl_exp.inference.results import accuracy_table, format_table, suite_rows, write_results
    from dsvl_exp.inference.suites import read_suite

    if omp_threads:
        torch.set_num_threads(omp_threads)
    from dsvl_exp.collectives import process_group_backend

    world = int(os.environ.get("WORLD_SIZE", 1))
    args = argparse.Namespace(**options)
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))  # one GPU per rank
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=process_group_backend(device.startswith("cuda")))
    try:
        torch.manual_seed(args.seed)
        suites = [read_suite(spec) for spec in args.suites]
        loaded = load_model(args.model, max_images=args.max_images, device=device, trust_checkpoint=args.trust_checkpoint)
        conversations = [conv for suite in suites for conv in suite.conversations]
        answers = answer_sharded(loaded, conversations, generation_settings(args), args.batch_size, args.history)
        if world > 1 and dist.get_rank() != 0:
            return None
        rows_by_suite, start = {}, 0
        for suite in suites:
            rows_by_suite[suite.name] = suite_rows(suite, answers[start:start + len(suite.conversations)])
            start += len(suite.conversations)
        table = accuracy_table(rows_by_suite)
        out = Path(args.out)
        write_results(out, rows_by_suite, table, evaluation_setup(loaded, generation_settings(args), args.history))
        rounds = sum(len(rows) for rows in rows_by_suite.values())
        print(f"{rounds} rounds of {len(conversations)} conversations answered on {world} rank(s) ("
              f"{'one GPU each' if world > 1 and device.startswith('cuda') else device}); answers in {out}/")
        if table:
            print(format_table(table))
        return table
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def launch(options: dict, nproc_per_node: int) -> None:
    import uuid

    from torch.distributed.launcher.api import elastic_launch

    from dsvl_exp.training.distributed import free_port
    from dsvl_exp.training.launch import launch_config
    from dsvl_exp.training.rendezvous import cpu_count, omp_threads_per_rank

    threads = omp_threads_per_rank(cpu_count(), nproc_per_node)
    config = launch_config(nproc_per_node=nproc_per_node, rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{free_port()}",
                           max_restarts=0, monitor_interval=0.5, start_method="spawn", run_id=uuid.uuid4().hex[:12])
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by each worker's OpenMP runtime as it starts
    try:
        elastic_launch(config, evaluate_rank)(options, threads)
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    generation_settings(args)
    if args.batch_size < 1 or args.nproc_per_node < 1:
        raise UsageError("--batch-size and --nproc-per-node must be at least 1")
    resolve_device(args.device, args.nproc_per_node - 1)  # every rank's GPU exists (checked before any starts)
    from dsvl_exp.inference.loading import resolve_model_dir
    from dsvl_exp.inference.suites import read_suite
    from dsvl_exp.training.rendezvous import started_by_external_launcher

    # Checked (and built-in suites generated, a checkpoint exported) once, before any rank starts.
    for spec in args.suites:
        read_suite(spec)
    resolve_model_dir(args.model, args.trust_checkpoint)
    options = vars(args)
    if started_by_external_launcher(os.environ) or args.nproc_per_node == 1:
        evaluate_rank(options)
    else:
        launch(options, args.nproc_per_node)
    return 0


def evaluation_setup(loaded, settings, history: str) -> dict:
    """What the scores depend on beyond the weights, recorded beside each accuracy entry."""
    from dataclasses import asdict

    from dsvl_exp import __version__

    rendered = loaded.template.render_prompt("<question>", 1, 1, first_round=True)
    return {"harness": {"name": "dsvl_exp.evaluate", "version": __version__},
            "prompt_template": {"system_prompt": loaded.template.system_prompt, "first_round_example": rendered},
            "generation": {**asdict(settings), "do_sample": settings.do_sample}, "history": history}


def cli() -> None:
    """The console script (and `python -m`); exit statuses in dsvl_exp/console.py."""
    run_command(main)


if __name__ == "__main__":
    cli()

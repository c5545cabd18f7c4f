"""What one rank holds at the end of a run: its share of every parameter, the optimizer's
master weights and state, and the process's peak resident memory. Each rank writes
`ranks/rank-<r>.json` in the run directory, so the memory a ZeRO stage saves can be read off
a real run (scripts/bench_distributed.py compares them)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dsvl_exp.process import peak_rss_bytes


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def parameter_shares(module: torch.nn.Module) -> dict[str, dict[str, int]]:
    """Per parameter: its full size and the part this rank stores. ZeRO-3 parameters keep their
    shard in `ds_tensor` (padded to an equal share per rank); others are whole on every rank."""
    shares = {}
    for name, param in module.named_parameters():
        if hasattr(param, "ds_tensor"):
            shares[name] = {"numel": int(param.ds_numel), "local": int(param.ds_tensor.numel()),
                            "bytes": tensor_bytes(param.ds_tensor)}
        else:
            shares[name] = {"numel": param.numel(), "local": param.numel(), "bytes": tensor_bytes(param)}
    return shares


def optimizer_bytes(optimizer) -> dict[str, int]:
    """The wrapped torch optimizer's parameters (ZeRO's fp32 master partitions) and its state
    (Adam moments), counted once per storage. ZeRO-3 empties the param groups between steps,
    so the master partitions are also found as the keys of the state."""
    base = getattr(optimizer, "optimizer", optimizer)
    seen: set[int] = set()

    def count(tensors) -> int:
        total = 0
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in seen:
                seen.add(tensor.untyped_storage().data_ptr())
                total += tensor_bytes(tensor)
        return total

    master = count([*base.state.keys(), *(p for group in base.param_groups for p in group["params"])])
    state = count(value for entry in base.state.values() for value in entry.values())
    return {"master_bytes": master, "state_bytes": state}


def rank_footprint(engine, rank: int, world_size: int) -> dict:
    shares = parameter_shares(engine.module)
    return {
        "rank": rank,
        "world_size": world_size,
        "zero_stage": engine.zero_optimization_stage(),
        "parameter_bytes": sum(entry["bytes"] for entry in shares.values()),
        **optimizer_bytes(engine.optimizer),
        "peak_rss_bytes": peak_rss_bytes(),
        "parameters": shares,
    }


def write_rank_footprint(run_dir: Path, engine, rank: int, world_size: int) -> Path:
    path = Path(run_dir) / "ranks" / f"rank-{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rank_footprint(engine, rank, world_size), indent=1))
    return path

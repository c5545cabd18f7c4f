"""Work split across the ranks and gathered back, so N ranks do a start-up job once, not N times.

Without an initialised process group (tests, tools, one rank) everything runs locally. Every
rank must call these with the same items in the same order (they do: all ranks build the same
data from the same files and seed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def map_sharded(items: Sequence, work: Callable[[Sequence], list]) -> list:
    """`work(items)` computed as rank r doing items[r::world], gathered back into item order."""
    rank, world = rank_and_world()
    if world == 1:
        return list(work(items))
    mine = list(work(items[rank::world]))
    shards: list[Any] = [None] * world
    dist.all_gather_object(shards, mine)
    merged = [None] * len(items)
    for r, shard in enumerate(shards):
        merged[r::world] = shard
    return merged


def broadcast_from_zero(value: Any) -> Any:
    rank, world = rank_and_world()
    if world == 1:
        return value
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def all_ranks_true(flag: bool) -> bool:
    """True only when `flag` is true on every rank (a decision all ranks then follow together)."""
    if rank_and_world()[1] == 1:
        return flag
    import torch

    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())

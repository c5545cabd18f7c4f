"""Work split across the ranks and gathered back, so N ranks do a start-up job once, not N times.

Without an initialised process group (tests, tools, one rank) everything runs locally. Every
rank must call these with the same items in the same order (they do: all ranks build the same
data from the same files and seed). The collectives themselves live in `dsvl_exp.collectives`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dsvl_exp import collectives
from dsvl_exp.collectives import all_true as all_ranks_true  # noqa: F401 (data/length.py uses this name)
from dsvl_exp.collectives import barrier, rank_and_world  # noqa: F401


def map_sharded(items: Sequence, work: Callable[[Sequence], list]) -> list:
    """`work(items)` computed as rank r doing items[r::world], gathered back into item order."""
    rank, world = rank_and_world()
    if world == 1:
        return list(work(items))
    shards = collectives.all_gather_objects(list(work(items[rank::world])))
    merged = [None] * len(items)
    for r, shard in enumerate(shards):
        merged[r::world] = shard
    return merged


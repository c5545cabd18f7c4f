"""Every collective the package issues goes through here, so one module decides which device a
collective's tensor lives on and which backend serves it.

The process group is started with a backend per device type (`process_group_backend`): on a
machine with CUDA `cpu:gloo,cuda:nccl`, so a small CPU tensor (a flag, a count) goes through gloo
and a tensor already on the GPU through NCCL; without CUDA gloo alone. A group started with NCCL
alone has no backend for CPU tensors ("No backend type associated with device type cpu"), which
is how a CPU-only flag at data start-up crashed every multi-GPU run while every gloo test passed;
tests/test_collectives.py replays that rule on CPU.

Object collectives (pickled values) travel as CPU tensors through gloo under the mixed backend.
Without an initialised group, or with one rank, every function here is local and issues nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


def process_group_backend(cuda_available: bool) -> str:
    """The backend string `init_process_group` is given: one backend for each device type a
    collective's tensor may live on."""
    return "cpu:gloo,cuda:nccl" if cuda_available else "gloo"


def served_device_types(backend: str) -> set[str]:
    """Device types a backend string serves (`nccl` only CUDA, `gloo` CPU and CUDA, a
    `cpu:gloo,cuda:nccl` spec exactly the device types it names)."""
    if ":" in backend:
        return {part.split(":", 1)[0] for part in backend.split(",")}
    return {"nccl": {"cuda"}, "gloo": {"cpu", "cuda"}}.get(backend, {"cpu", "cuda"})


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In place, on the tensor's own device (served by the group's backend for that device)."""
    if is_distributed():
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return tensor


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Python numbers summed over the ranks (a CPU tensor: gloo serves it under either backend)."""
    if not is_distributed():
        return [float(v) for v in values]
    return all_reduce_(torch.tensor(list(values), dtype=torch.float64)).tolist()


def all_true(flag: bool) -> bool:
    """True only when `flag` is true on every rank (a decision all ranks then follow together)."""
    if not is_distributed():
        return bool(flag)
    return bool(all_reduce_(torch.tensor([int(flag)]), op="min").tolist()[0])


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order."""
    rank, world = rank_and_world()
    if world == 1:
        return [value]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank `src`'s value on every rank."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()

"""Process-group set-up that works for one process, torchrun, the deepspeed launcher and the
in-process launcher alike. CPU ranks use gloo, GPU ranks nccl."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_rendezvous_env() -> None:
    """A plain `python -m dsvl_exp.train` is rank 0 of a world of 1."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def init_process_group() -> None:
    if dist.is_initialized():
        return
    ensure_rendezvous_env()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend=backend)
    if backend == "gloo":
        skip_cpu_shm_comm_build()
    # DeepSpeed's comm layer wraps the group now, not at initialize: zero.Init (model
    # construction under ZeRO-3) reads the world size from it before the engine exists.
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def skip_cpu_shm_comm_build() -> None:
    """DeepSpeed's CPU comm backend JIT-compiles its shared-memory op (~30 s on a fresh machine)
    at initialize, in every rank. Only `inference_all_reduce` (tensor-parallel inference) uses
    it; training collectives go through torch.distributed (gloo) either way. Mark the op
    unavailable, which is what DeepSpeed itself does on machines that cannot build it."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def is_rank_zero() -> bool:
    return rank() == 0


def all_reduce_sum(values: list[float]) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")

"""Process-group set-up that works for one process, torchrun, the deepspeed launcher and the
in-process launcher alike. CPU ranks use gloo; GPU ranks `cpu:gloo,cuda:nccl` (see
`dsvl_exp.collectives`, which every collective goes through)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

from dsvl_exp import collectives


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
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend=collectives.process_group_backend(cuda), timeout=process_group_timeout())
    if not cuda:
        skip_cpu_shm_comm_build()
    # DeepSpeed's comm layer wraps the group now, not at initialize: zero.Init (model
    # construction under ZeRO-3) reads the world size from it before the engine exists.
    from dsvl_exp.training.deepspeed_import import import_deepspeed

    import_deepspeed().init_distributed(dist_backend="nccl" if cuda else "gloo", auto_mpi_discovery=False)


def process_group_timeout():
    """How long a collective waits for the slowest rank: `DSVL_COLLECTIVE_TIMEOUT_MIN` minutes
    (default 30, torch's NCCL default is 10). Data start-up on a large mixture (reading and
    checking records, round lengths) keeps ranks apart for minutes before the first training
    collective, and a timeout there kills a healthy run."""
    from datetime import timedelta

    return timedelta(minutes=float(os.environ.get("DSVL_COLLECTIVE_TIMEOUT_MIN", 30)))


def skip_cpu_shm_comm_build() -> None:
    """DeepSpeed's CPU comm backend JIT-compiles its shared-memory op (~30 s on a fresh machine)
    at initialize, in every rank. Only `inference_all_reduce` (tensor-parallel inference) uses
    it; training collectives go through torch.distributed (gloo) either way. Mark the op
    unavailable, which is what DeepSpeed itself does on machines that cannot build it."""
    from dsvl_exp.training.deepspeed_import import import_deepspeed

    import_deepspeed()  # before `deepspeed.ops` imports the package the slow way
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


all_reduce_sum = collectives.all_reduce_sum
barrier = collectives.barrier


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")

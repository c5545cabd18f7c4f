"""Where a rank learns who it is: torch's env:// variables (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) set by torchrun, the deepspeed launcher, our own
elastic launch, or mapped here from SLURM (through submitit). Functions of an environment mapping; nothing
here imports torch, so the entry point can use them before torch's thread pools exist."""

from __future__ import annotations

import os
from collections.abc import Mapping

from dsvl_exp.errors import UserError
from dsvl_exp.process import TORCH_RANK_VARIABLES, started_by_external_launcher  # noqa: F401 (this module's API)


def local_world_size(environ: Mapping[str, str]) -> int:
    """Ranks on this node: torchrun says LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE."""
    for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        if environ.get(name, "").isdigit():
            return int(environ[name])
    return int(environ.get("WORLD_SIZE", 1))


def threads_for_rank(environ: Mapping[str, str], configured: int | None = None) -> int:
    """launcher.omp_num_threads, else an OMP_NUM_THREADS the user (or torchrun) set, else the
    cores shared out between the ranks of this node."""
    inherited = environ.get("OMP_NUM_THREADS", "")
    if configured is None and inherited.isdigit() and int(inherited) > 0:
        return int(inherited)
    return omp_threads_per_rank(cpu_count(), local_world_size(environ), configured)


def omp_threads_per_rank(cpu_count: int, ranks_per_node: int, configured: int | None = None) -> int:
    """Cores shared out between the ranks of a node, at least one each. Without it every rank
    starts one OpenMP thread per core and they fight over the cores (a ZeRO-3 step on 2 cores
    took 0.45 s instead of 0.10 s)."""
    if configured is not None:
        if configured < 1:
            raise UserError(f"launcher.omp_num_threads={configured} must be at least 1 (or null for automatic)")
        return configured
    return max(1, cpu_count // max(1, ranks_per_node))


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, which containers and SLURM narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def without_local_rank_argument(arguments: list[str]) -> tuple[list[str], int | None]:
    """The deepspeed launcher appends `--local_rank=N`, which Hydra's override grammar rejects.
    Returns the arguments without it and N (the launcher also exports LOCAL_RANK)."""
    kept, local_rank = [], None
    skip_next = False
    for index, argument in enumerate(arguments):
        if skip_next:
            skip_next = False
            continue
        if argument.startswith("--local_rank=") or argument.startswith("--local-rank="):
            local_rank = int(argument.split("=", 1)[1])
        elif argument in ("--local_rank", "--local-rank") and index + 1 < len(arguments):
            local_rank = int(arguments[index + 1])
            skip_next = True
        else:
            kept.append(argument)
    return kept, local_rank


def slurm_rendezvous_env() -> dict[str, str]:
    """torch's env:// variables for this SLURM task (one task per rank), from submitit's helper
    for exactly this: it parses SLURM_JOB_NODELIST (the master is the first host) and draws the
    port from the job id, so every task of the job picks the same one without talking (an
    explicit MASTER_PORT wins; so does MASTER_ADDR here)."""
    missing = [name for name in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_JOB_NODELIST", "SLURM_JOB_ID")
               if name not in os.environ]
    if missing or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        raise UserError(f"launcher.kind=slurm but this process is no submitit SLURM task (no "
                        f"{', '.join(missing or ['SUBMITIT_EXECUTOR=slurm'])}): start it through hydra/launcher=slurm "
                        "(python -m dsvl_exp.train -m launcher=slurm ...)")
    from submitit.helpers import TorchDistributedEnvironment

    task = TorchDistributedEnvironment()
    return {
        "RANK": str(task.rank),
        "LOCAL_RANK": str(task.local_rank),
        "WORLD_SIZE": str(task.world_size),
        "LOCAL_WORLD_SIZE": str(task.local_world_size),
        "MASTER_ADDR": os.environ.get("MASTER_ADDR") or task.master_addr,
        "MASTER_PORT": str(task.master_port),
    }

"""Under an external launcher (torchrun, deepspeed) every rank runs the entry point. Only rank 0
runs Hydra: it composes the config, owns the one run directory and its .hydra files, and hands
each job (resolved config + run directory) to the other ranks, which run it and wait for the
next (a multirun under torchrun is a sequence of jobs). `None` says there are no more jobs.

If rank 0 fails, it exits non-zero and the launcher stops the other ranks."""

from __future__ import annotations

from dsvl_exp import collectives
from dsvl_exp.training import distributed
from dsvl_exp.training.rank_entry import train_on_rank


def _broadcast_from_rank_zero(job: tuple[dict, str] | None) -> tuple[dict, str] | None:
    distributed.init_process_group()
    return collectives.broadcast_object(job, src=0)


def share_job(config: dict, run_dir: str) -> None:
    """Rank 0: the job every rank is about to run."""
    _broadcast_from_rank_zero((config, run_dir))


def announce_no_more_jobs() -> None:
    """Rank 0, once Hydra has run every job."""
    _broadcast_from_rank_zero(None)


def run_jobs_from_rank_zero() -> None:
    """Ranks other than 0: train rank 0's jobs until it says there are no more."""
    while (job := _broadcast_from_rank_zero(None)) is not None:
        config, run_dir = job
        train_on_rank(config, run_dir, omp_threads=config["launcher"]["omp_num_threads"])

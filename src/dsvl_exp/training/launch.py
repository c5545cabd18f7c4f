"""Start the ranks of one run from inside the Hydra task.

    python -m dsvl_exp.train launcher.nproc_per_node=2 zero=3     # elastic launch, 2 ranks
    torchrun --nproc_per_node 2 -m dsvl_exp.train zero=3           # ranks already exist
    deepspeed --num_gpus 2 --module dsvl_exp.train zero=3          # likewise (--local_rank handled)
    python -m dsvl_exp.train -m launcher=slurm launcher.nodes=2 ... # one SLURM task per rank

The config is composed once, by Hydra, in one process; every rank receives it resolved, as a
plain container (closed choices as plain strings), with the one run directory. Rank 0's return
value (the monitored eval metric) is the task's return value.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import uuid
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dsvl_exp.errors import UserError
from dsvl_exp.training import rendezvous
from dsvl_exp.training.rank_entry import train_on_rank

log = logging.getLogger(__name__)


def rank_config(cfg: DictConfig) -> dict:
    """What every rank receives: resolved, enums as their (string) names."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def launch_ranks(cfg: DictConfig, run_dir: Path) -> float:
    """Train in this process, or start the ranks and train in them; returns rank 0's metric."""
    settings = cfg.launcher
    config = rank_config(cfg)
    if rendezvous.started_by_external_launcher(os.environ):
        from dsvl_exp.training import job_relay

        if settings.nproc_per_node not in (1, rendezvous.local_world_size(os.environ)):
            warnings.warn(f"launcher.nproc_per_node={settings.nproc_per_node} is ignored: an external launcher "
                          f"already started {os.environ['WORLD_SIZE']} rank(s)", stacklevel=2)
        job_relay.share_job(config, str(run_dir))
        return train_on_rank(config, str(run_dir), omp_threads=settings.omp_num_threads)
    if settings.kind == "slurm":
        os.environ.update(rendezvous.slurm_rendezvous_env())
        return train_on_rank(config, str(run_dir), omp_threads=settings.omp_num_threads)
    check_local_settings(settings.nproc_per_node)
    if settings.nproc_per_node == 1:
        return train_on_rank(config, str(run_dir), omp_threads=settings.omp_num_threads)
    return launch_local_ranks(cfg, config, run_dir)


def check_local_settings(nproc_per_node: int) -> None:
    if nproc_per_node < 1:
        raise UserError(f"launcher.nproc_per_node={nproc_per_node} must be at least 1")
    import torch

    if torch.cuda.is_available():
        if nproc_per_node > torch.cuda.device_count():
            raise UserError(f"launcher.nproc_per_node={nproc_per_node} but only {torch.cuda.device_count()} "
                            "GPU(s) are visible: one rank per GPU")
    elif nproc_per_node > rendezvous.cpu_count():
        warnings.warn(f"launcher.nproc_per_node={nproc_per_node} is more than the {rendezvous.cpu_count()} CPU core(s) "
                      "available: ranks will share cores and run slower", stacklevel=2)


def launch_config(nproc_per_node: int, rdzv_backend: str, rdzv_endpoint: str, max_restarts: int,
                  monitor_interval: float, start_method: str, run_id: str):
    """One node, `nproc_per_node` workers, rendezvous at `rdzv_endpoint`."""
    from torch.distributed.launcher.api import LaunchConfig

    return LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc_per_node, run_id=run_id,
                        rdzv_backend=rdzv_backend, rdzv_endpoint=rdzv_endpoint, max_restarts=max_restarts,
                        monitor_interval=monitor_interval, start_method=start_method)


def launch_local_ranks(cfg: DictConfig, config: dict, run_dir: Path) -> float:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    from dsvl_exp.training.distributed import free_port

    settings = cfg.launcher
    launch = launch_config(
        nproc_per_node=settings.nproc_per_node,
        rdzv_backend=settings.rdzv_backend,
        rdzv_endpoint=settings.rdzv_endpoint or f"127.0.0.1:{free_port()}",
        max_restarts=settings.max_restarts,
        monitor_interval=settings.monitor_interval,
        start_method=str(settings.start_method),
        run_id=uuid.uuid4().hex[:12],
    )
    log.info("Starting %d ranks (elastic launch, %s rendezvous at %s)", launch.nproc_per_node, launch.rdzv_backend,
             launch.rdzv_endpoint)
    try:
        results = elastic_launch(launch, train_on_rank)(config, str(run_dir), settings.omp_num_threads, hydra_log_file())
    except ChildFailedError as failure:
        raise user_error_of_ranks(failure) or failure
    except SignalException as stop:
        # SIGTERM/SIGINT: the agent forwarded it to the ranks, which finished their step, saved a
        # checkpoint and exited (torch's agent allows them 30 s before SIGKILL; the previous
        # checkpoint stays intact if a save takes longer).
        log.warning("Stopped by %s; resume with the same command plus hydra.run.dir=%s resume=auto",
                    signal.Signals(stop.sigval).name, run_dir)
        return math.nan
    log.info("Ranks finished; rank 0 returned %s = %s", cfg.eval.monitor, results[0])
    return results[0]


def user_error_of_ranks(failure) -> UserError | None:
    """A rank's UserError (bad data, say) as one UserError here, so the entry point prints its
    message instead of the elastic agent's report."""
    # noqa: F401 below: imported to register their classes among UserError's subclasses
    import dsvl_exp.data.errors  # noqa: F401
    import dsvl_exp.training.checkpoint  # noqa: F401
    import dsvl_exp.training.loop  # noqa: F401
    import dsvl_exp.training.resume  # noqa: F401

    names = set()
    pending = [UserError]
    while pending:
        kind = pending.pop()
        names.add(kind.__name__)
        pending += kind.__subclasses__()
    for rank_failure in failure.failures.values():
        # @record's error file: {"message": "<ExceptionType>: <message>", "extraInfo": {...}}
        report = rank_failure.message
        text = report.get("message", "") if isinstance(report, dict) else str(report)
        kind, sep, message = text.partition(": ")
        if sep and kind in names:
            return UserError(message)
    return None


def hydra_log_file() -> str | None:
    """The job log Hydra opened in the run directory, for rank 0 to append to."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None

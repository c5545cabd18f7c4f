"""Start the ranks of one run from inside the Hydra task.

    python -m dsvl_exp.train launcher.nproc_per_node=2 zero=3     # elastic launch, 2 ranks
    torchrun --nproc_per_node 2 -m dsvl_exp.train zero=3           # ranks already exist
    deepspeed --num_gpus 2 --module dsvl_exp.train zero=3          # likewise (--local_rank handled)
    python -m dsvl_exp.train -m launcher=slurm launcher.nodes=2 ... # one SLURM task per rank

The config is composed once, by Hydra, in one process; every rank receives it resolved, as a
plain container, with the one run directory. Rank 0's return value (the monitored eval metric)
is the task's return value.
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
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import record

from dsvl_exp.training import rendezvous

log = logging.getLogger(__name__)

START_METHODS = ("spawn", "fork", "forkserver")
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def run(cfg: DictConfig, run_dir: Path) -> float:
    """The Hydra task: train in this process, or start the ranks and train in them."""
    settings = cfg.launcher
    if rendezvous.started_by_external_launcher(os.environ):
        from dsvl_exp.training import followers

        if settings.nproc_per_node not in (1, rendezvous.local_world_size(os.environ)):
            warnings.warn(f"launcher.nproc_per_node={settings.nproc_per_node} is ignored: an external launcher "
                          f"already started {os.environ['WORLD_SIZE']} rank(s)", stacklevel=2)
        config = OmegaConf.to_container(cfg, resolve=True)
        followers.share_job(config, str(run_dir))
        return run_rank(config, str(run_dir), omp_threads=settings.omp_num_threads)
    if settings.kind == "slurm":
        os.environ.update(rendezvous.slurm_rendezvous_env(os.environ))
        return run_rank(OmegaConf.to_container(cfg, resolve=True), str(run_dir), omp_threads=settings.omp_num_threads)
    if settings.kind != "local":
        raise ValueError(f"launcher.kind={settings.kind!r}: expected local or slurm")
    check_local_settings(settings.nproc_per_node, settings.start_method)
    if settings.nproc_per_node == 1:
        from dsvl_exp.training.recipe import train

        if settings.omp_num_threads is not None:  # otherwise torch's default: every core
            import torch

            torch.set_num_threads(rendezvous.omp_threads_per_rank(rendezvous.cpu_count(), 1, settings.omp_num_threads))
        return train(cfg, run_dir)
    return launch_local_ranks(cfg, run_dir)


def check_local_settings(nproc_per_node: int, start_method: str) -> None:
    if nproc_per_node < 1:
        raise ValueError(f"launcher.nproc_per_node={nproc_per_node} must be at least 1")
    if start_method not in START_METHODS:
        raise ValueError(f"launcher.start_method={start_method!r}: expected one of {START_METHODS}")
    import torch

    if torch.cuda.is_available():
        if nproc_per_node > torch.cuda.device_count():
            raise ValueError(f"launcher.nproc_per_node={nproc_per_node} but only {torch.cuda.device_count()} "
                             "GPU(s) are visible: one rank per GPU")
    elif nproc_per_node > rendezvous.cpu_count():
        warnings.warn(f"launcher.nproc_per_node={nproc_per_node} is more than the {rendezvous.cpu_count()} CPU core(s) "
                      "available: ranks will share cores and run slower", stacklevel=2)


def launch_config(nproc_per_node: int, rdzv_backend: str, rdzv_endpoint: str, max_restarts: int,
                  monitor_interval: float, start_method: str, run_id: str):
    """One node, `nproc_per_node` workers, rendezvous at `rdzv_endpoint`."""
    from torch.distributed.launcher.api import LaunchConfig

    return LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc_per_node,
        run_id=run_id,
        rdzv_backend=rdzv_backend,
        rdzv_endpoint=rdzv_endpoint,
        max_restarts=max_restarts,
        monitor_interval=monitor_interval,
        start_method=start_method,
    )


def launch_local_ranks(cfg: DictConfig, run_dir: Path) -> float:
    from torch.distributed.launcher.api import elastic_launch

    from dsvl_exp.training.distributed import free_port

    settings = cfg.launcher
    threads = rendezvous.omp_threads_per_rank(rendezvous.cpu_count(), settings.nproc_per_node, settings.omp_num_threads)
    config = launch_config(
        nproc_per_node=settings.nproc_per_node,
        rdzv_backend=settings.rdzv_backend,
        rdzv_endpoint=settings.rdzv_endpoint or f"127.0.0.1:{free_port()}",
        max_restarts=settings.max_restarts,
        monitor_interval=settings.monitor_interval,
        start_method=settings.start_method,
        run_id=uuid.uuid4().hex[:12],
    )
    log.info("Starting %d ranks (elastic launch, %s rendezvous at %s, %d OpenMP thread(s) each)",
             config.nproc_per_node, config.rdzv_backend, config.rdzv_endpoint, threads)
    log_file = hydra_log_file()
    # The workers' OpenMP runtime reads OMP_NUM_THREADS when it loads, i.e. as they start.
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        results = elastic_launch(config, run_rank)(
            OmegaConf.to_container(cfg, resolve=True), str(run_dir), threads, log_file
        )
    except SignalException as stop:
        # SIGTERM/SIGINT: the agent forwarded it to the ranks, which finished their step, saved a
        # checkpoint and exited (torch's agent allows them 30 s before SIGKILL; the previous
        # checkpoint stays intact if a save takes longer).
        log.warning("Stopped by %s; resume with the same command plus hydra.run.dir=%s resume=auto",
                    signal.Signals(stop.sigval).name, run_dir)
        return math.nan
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    log.info("Ranks finished; rank 0 returned %s = %s", cfg.eval.monitor, results[0])
    return results[0]


def hydra_log_file() -> str | None:
    """The job log Hydra opened in the run directory, for rank 0 to append to."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


@record
def run_rank(config: dict, run_dir: str, omp_threads: int | None = None, log_file: str | None = None) -> float:
    """One rank: the resolved config as a plain container, the shared run directory. Runs in
    spawned workers, under torchrun / deepspeed and in SLURM tasks; never composes a config."""
    import torch

    threads = rendezvous.omp_threads_per_rank(
        rendezvous.cpu_count(), rendezvous.local_world_size(os.environ), omp_threads or env_threads()
    )
    torch.set_num_threads(threads)
    # DeepSpeed's collectives call torch APIs that warn on every call; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    configure_rank_logging(int(os.environ.get("RANK", 0)), log_file)
    from dsvl_exp.training.recipe import train

    return train(OmegaConf.create(config), Path(run_dir))


def env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def configure_rank_logging(rank: int, log_file: str | None) -> None:
    """Rank 0 logs INFO to the console and the run's log file; other ranks only warnings.
    A process whose logging Hydra already set up (rank 0 under torchrun) keeps it."""
    root = logging.getLogger()
    if root.handlers:
        if rank != 0:
            root.setLevel(logging.WARNING)
        return
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if rank == 0 and log_file:
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)

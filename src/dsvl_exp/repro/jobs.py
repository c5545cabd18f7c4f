"""One Hydra job, recorded and isolated from the next one of a multirun.

Hydra runs the jobs of a multirun one after another in the same process. Its `run_job` catches an
exception from the task, marks the job FAILED and goes on; the basic sweeper re-raises the first
failure only after the whole batch ran, and the Optuna sweeper marks the trial FAIL (with
`max_failure_rate` high enough to go on). What Hydra does not do is undo the task's global
state, so a job that died mid-training would leave its process group, DeepSpeed's ZeRO-3 hooks
into transformers and its W&B run open for the next job. The recipe's cleanup ends its own run
(repro/run_end.py); `run_recorded_job` ends, through the same `end_run`, what failed outside it (a bad
config, a rank that died) and restores the process for the next job, success or failure.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dsvl_exp.repro import manifest
from dsvl_exp.process import started_by_external_launcher
from dsvl_exp.repro.run_end import RunEnding, end_run

log = logging.getLogger(__name__)


class JobFailed(RuntimeError):
    """A job that exited through SystemExit inside a multirun: Hydra only catches Exception."""


def hydra_info() -> dict:
    """Overrides, group choices and sweep position of the current Hydra job (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    return {
        "mode": str(hydra_cfg.mode.name) if hydra_cfg.mode is not None else None,
        "overrides": list(hydra_cfg.overrides.task),
        "choices": {k: v for k, v in OmegaConf.to_container(hydra_cfg.runtime.choices).items()
                    if not k.startswith("hydra/") or k in ("hydra/sweeper", "hydra/launcher")},
        "job_num": hydra_cfg.job.get("num"),
        "sweep_dir": hydra_cfg.sweep.dir if str(hydra_cfg.mode.name) == "MULTIRUN" else None,
        "output_dir": hydra_cfg.runtime.output_dir,
        "version": hydra_cfg.runtime.version,
    }


def is_rank_zero_task() -> bool:
    """The Hydra task runs once per run, except under SLURM (once per rank)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) == 0


def run_recorded_job(cfg: DictConfig, run_dir: Path, task: Callable[[], float]) -> float:
    rank_zero = is_rank_zero_task()
    info = hydra_info()
    # The whole environment: a job sets rendezvous variables, OMP_NUM_THREADS, W&B's service
    # address...; the next job of a multirun must start from what the command started with.
    saved_env = dict(os.environ)
    # Decided before the task runs: a single-process job sets RANK / WORLD_SIZE itself.
    # Under torchrun / deepspeed the process group belongs to the launcher's ranks: the other
    # ranks keep waiting on it for rank 0's next job (training/job_relay.py), so it stays.
    launcher_owns_group = started_by_external_launcher(os.environ)
    if rank_zero:
        manifest.begin_manifest(run_dir, OmegaConf.to_container(cfg, resolve=True), info)
    ending = None  # a task that returned: the recipe recorded its own ending
    try:
        return task()
    except BaseException as error:
        ending = RunEnding.of_error(error)
        if rank_zero:
            # A user error (SystemExit) has printed its message already: say where it is recorded only.
            what = "" if isinstance(error, SystemExit) else f" ({ending.reason})"
            log.error("job failed%s; recorded in %s", what, Path(run_dir) / manifest.MANIFEST)
        # The exception is kept by Hydra until the sweep ends: drop the frames' locals (model,
        # engine, batches) so a failed job's memory is freed now; the traceback stays printable.
        traceback.clear_frames(error.__traceback__)
        if isinstance(error, SystemExit) and error.code not in (0, None) and info.get("mode") == "MULTIRUN":
            raise JobFailed(f"job exited with status {error.code}") from error
        raise
    finally:
        try:
            end_run(run_dir, ending, record=rank_zero, monitor=OmegaConf.select(cfg, "eval.monitor"),
                    keep_process_group=launcher_owns_group)
        finally:
            restore_process(saved_env)


def restore_process(saved_env: dict[str, str]) -> None:
    """Leave the process as the next job expects to find it (the process group is `end_run`'s)."""
    if "transformers.integrations.deepspeed" in sys.modules:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()  # a ZeRO-3 job's partitioned-construction hook
    for name in set(os.environ) - set(saved_env):
        del os.environ[name]
    os.environ.update(saved_env)
    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

"""The end of every run, however it ended: one place for what must always happen (as
lightning-hydra-template's `task_wrapper` does in its `finally`).

    end_run(run_dir, ending, record=rank_zero, trackers=logger)

closes the run's trackers (W&B marked failed when the run failed), records the ending in
manifest.json (status `completed`, `stopped`, `failed` or `interrupted`, with the reason) and tears
down the process group. The recipe calls it from its cleanup phase on every rank; the Hydra job
(repro/jobs.py) calls it for what failed outside the recipe (a bad config, a rank that died).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from dsvl_exp.repro import manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunEnding:
    status: str  # completed | stopped | failed | interrupted
    reason: str

    @classmethod
    def of_error(cls, error: BaseException) -> "RunEnding":
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        return cls(status, manifest.error_line(error))

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "interrupted")


def end_run(run_dir: Path, ending: RunEnding | None, record: bool, trackers=None, summary: dict | None = None,
            monitor: str | None = None, keep_process_group: bool = False) -> None:
    """Each part runs even when the one before it raised. `ending` None: a run whose own cleanup
    already recorded its end (only what is left open is closed). `trackers`: anything with
    `close(status)` (training.logging.MetricsLogger)."""
    status = ending.status if ending is not None else "completed"
    try:
        if trackers is not None:
            trackers.close(status)
        close_global_wandb_run(failed=ending is not None and ending.failed)
    finally:
        try:
            if record and ending is not None:
                manifest.record_end(run_dir, summary or {}, monitor, status=ending.status, reason=ending.reason)
        finally:
            if not keep_process_group:
                tear_down_process_group()


def close_global_wandb_run(failed: bool) -> None:
    """A W&B run left open (a tracker that failed before the recipe held it) would take the next
    job's logs in a multirun."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)


def tear_down_process_group() -> None:
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if "deepspeed.comm" in sys.modules:
        import deepspeed.comm

        # also drops DeepSpeed's cached world/data-parallel groups; after a plain torch destroy
        # the next engine failed with "Group ... is not registered"
        deepspeed.comm.destroy_process_group()
    else:
        dist.destroy_process_group()

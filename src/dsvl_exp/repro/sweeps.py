"""Sweep settings derived from the run config, so a sweep optimises the right thing.

`${dsvl_direction:${eval.monitor}}` (used by conf/hydra/sweeper/dsvl_optuna.yaml) gives Optuna
`minimize` for a loss and `maximize` for an accuracy. `SweepDirectionCheck`, a Hydra callback in
conf/hydra/default.yaml, stops a multirun before its first job when a sweeper's `direction` was
set by hand against `eval.monitor` (e.g. plain `hydra/sweeper=optuna`, which minimises, with the
default `eval.monitor=eval/accuracy`: it picked the worse learning rate).
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dsvl_exp.errors import ConfigError
from dsvl_exp.repro.metrics import direction_for

DIRECTION_RESOLVER = "dsvl_direction"


def register_sweep_resolvers() -> None:
    if not OmegaConf.has_resolver(DIRECTION_RESOLVER):
        OmegaConf.register_new_resolver(DIRECTION_RESOLVER, direction_for)


def direction_name(direction: Any) -> str:
    return str(getattr(direction, "name", direction)).lower()


def check_direction(config: DictConfig) -> None:
    """Raise ConfigError when the sweeper's single `direction` disagrees with eval.monitor."""
    sweeper = config.hydra.sweeper
    if "direction" not in sweeper:
        return  # a grid (basic sweeper) optimises nothing
    directions = sweeper.direction
    if OmegaConf.is_list(directions):
        return  # multi-objective: the task would return several values; nothing to check
    monitor = config.eval.monitor
    wanted = direction_for(monitor)
    if direction_name(directions) != wanted:
        raise ConfigError(
            f"hydra.sweeper.direction={direction_name(directions)} but eval.monitor={monitor} should be "
            f"{wanted}d: the sweep would pick the worst trial. Use hparams_search=optuna (its direction "
            f"follows eval.monitor), or set hydra.sweeper.direction={wanted}, or monitor another metric."
        )


class SweepDirectionCheck(Callback):
    """Stops a multirun before its first job. Hydra turns an exception raised by a callback into a
    warning and goes on, so the message is printed here and the process exits."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_direction(config)
        except ConfigError as error:
            from dsvl_exp.console import EXIT_USER_ERROR

            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None


class SweepSummary(Callback):
    """At the end of a multirun: the best job and the single command that repeats it (with several
    seeds per configuration, `python -m dsvl_exp.sweep_report` adds mean ± std)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from dsvl_exp.repro.report import best_command, best_jobs, build_report

        try:
            report = build_report(config.hydra.sweep.dir)
        except (FileNotFoundError, ValueError):  # no job got as far as its manifest
            return
        best = best_jobs(report)
        if not best:
            print(f"sweep {report.sweep_dir}: no job completed with {report.monitor}", flush=True)
            return
        tie = f" (tied with {len(best) - 1} more)" if len(best) > 1 else ""
        print(f"sweep {report.sweep_dir}: best {report.monitor} {best[0].monitor_value:.6g} in job {best[0].name}{tie}; "
              f"as a single run:\n  {best_command(report)}\nreport: python -m dsvl_exp.sweep_report {report.sweep_dir}",
              flush=True)

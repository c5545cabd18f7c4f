"""OmegaConf resolvers the packaged configs use: where user-level experiments live, and the
experiment's name in run directories. Registered by the entry point (train.py) before Hydra
composes."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

EXPERIMENTS_ENV = "DSVL_EXPERIMENTS_DIR"
CHECKOUT_ROOT = Path(__file__).resolve().parents[3]  # src/dsvl_exp/config/ -> the repository, in a checkout


def experiment_dirs(environ=os.environ) -> list[str]:
    """Hydra search-path entries for user configs: $DSVL_EXPERIMENTS_DIR (os.pathsep-separated)
    and, when running from a checkout, its top-level `experiments/`. Each is a config root like
    the packaged `conf/`: `experiment/<name>.yaml` there is found by `experiment=<name>`."""
    dirs = [Path(entry).expanduser().resolve() for entry in environ.get(EXPERIMENTS_ENV, "").split(os.pathsep) if entry]
    checkout_experiments = CHECKOUT_ROOT / "experiments"
    if (CHECKOUT_ROOT / "pyproject.toml").is_file() and checkout_experiments.is_dir():
        dirs.append(checkout_experiments)
    return [f"file://{path}" for path in dict.fromkeys(dirs)]


def experiment_or_default(choice: str | None) -> str:
    """The run directory's first level: the experiment's name, or `default` without one."""
    return choice or "default"


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("dsvl_experiment_dirs", experiment_dirs, replace=True)
    OmegaConf.register_new_resolver("dsvl_experiment_or_default", experiment_or_default, replace=True)
    # The sweep directory is resolved by the sweeper before any job exists, when Hydra's
    # `${hydra:...}` resolver has no HydraConfig yet; it reads `${hydra.runtime.choices.experiment}`
    # from the config itself instead. Cached: OmegaConf keys the cache by the argument's text and
    # Hydra copies the sweep's cache into every job's config, so each job resolves the same
    # directory the sweeper created, also when the jobs sweep over `experiment`.
    OmegaConf.register_new_resolver("dsvl_sweep_experiment", experiment_or_default, replace=True, use_cache=True)

"""Run and sweep directories on disk: what marks one, Hydra's `.hydra/` files (written only once
a start passed its checks) and the clean-up after a start that was refused.

A refused start (a config error, a used run directory) must leave an existing run directory as
it was and leave no new directory behind, so Hydra's own `.hydra/` writing is switched off
(`hydra.output_subdir: null` in conf/hydra/default.yaml) and `save_hydra_files` writes the same
three files after the checks.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

HYDRA_SUBDIR = ".hydra"
# Files whose presence marks a directory as a run (manifest, Hydra's files, metrics) or a sweep.
RUN_MARKERS = ("manifest.json", HYDRA_SUBDIR, "metrics.jsonl", "multirun.yaml")
# Top-level checkout folders that only ever hold run outputs (Hydra's defaults, the README's runs/).
OUTPUT_ROOTS = ("outputs", "multirun", "runs", "wandb")


def holds_a_run(directory: Path) -> bool:
    return any((directory / marker).exists() for marker in RUN_MARKERS)


def save_hydra_files(hydra_root: DictConfig, task_cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra writes into `<run>/.hydra/`: the composed config, Hydra's config, the overrides."""
    out = Path(run_dir) / HYDRA_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(task_cfg))
    (out / "hydra.yaml").write_text(OmegaConf.to_yaml(hydra_root))
    (out / "overrides.yaml").write_text(OmegaConf.to_yaml(hydra_root.hydra.overrides.task))


def close_log_files_in(run_dir: Path) -> None:
    """Detach the file handlers Hydra opened inside `run_dir` (its `train.log`)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == Path(run_dir).resolve():
            root.removeHandler(handler)
            handler.close()


def remove_if_only_just_created(run_dir: Path, stop_at: Path) -> bool:
    """Remove `run_dir` when it holds nothing but the empty log file Hydra opened at this start
    (then it was created by this start), and its parents up to `stop_at` that are left empty."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        return False
    entries = list(run_dir.iterdir())
    if any(not (entry.is_file() and entry.suffix == ".log" and entry.stat().st_size == 0) for entry in entries):
        return False
    for entry in entries:
        entry.unlink()
    run_dir.rmdir()
    stop_at = Path(stop_at).resolve()
    parent = run_dir.parent
    while parent != stop_at and stop_at in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    return True

"""Which checkpoint a run continues from (`resume`), and the checks around it: a fresh run refuses
a used run directory, a resume refuses a config that means something else, and the metrics
logged after the checkpoint's step (by the run that went on and died) are dropped."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dsvl_exp.errors import UserError
from dsvl_exp.training.checkpoint import LATEST, TRAINER_STATE, read_latest

log = logging.getLogger(__name__)


class ResumeError(UserError, ValueError):
    """A run directory or checkpoint that this run may not start from or continue."""

# Keys a resume may change: how long to train, how to log, how to checkpoint and resume.
# Anything else (model, data, optimizer, seed, eval, ranks ...) changes what the run means.
CHANGEABLE_KEYS = ("train.max_steps", "train.epochs", "train.log_every_n_steps", "train.progress_bar",
                   "logger", "resume", "checkpoint")


def find_checkpoint(choice: str | None, checkpoint_dir: Path) -> Path | None:
    """resume=auto: the newest complete checkpoint in `checkpoint_dir` (None when there is none);
    resume=PATH: a checkpoint folder, a checkpoint directory or a run directory."""
    if choice is None:
        return None
    if choice == "auto":
        tag = read_latest(checkpoint_dir)
        return checkpoint_dir / tag if tag else None
    path = Path(choice).expanduser()
    for candidate_dir in (path, path / "checkpoints"):
        if (candidate_dir / TRAINER_STATE).is_file():
            return candidate_dir
        if (candidate_dir / LATEST).is_file() and read_latest(candidate_dir):
            return candidate_dir / read_latest(candidate_dir)
    raise ResumeError(f"resume={choice}: no complete checkpoint there (expected a folder with {TRAINER_STATE}, "
                     f"or a checkpoint directory / run directory whose `{LATEST}` names one); "
                     "use resume=auto to continue the run directory given by hydra.run.dir")


def check_run_dir_use(run_dir: Path, checkpoint_dir: Path, choice: str | None) -> None:
    """What the entry point checks before it writes anything: a fresh run needs an unused run
    directory, a resume a checkpoint it can find (the ranks decide the same again in the recipe)."""
    if choice is None:
        refuse_used_run_dir(run_dir, checkpoint_dir)
    else:
        find_checkpoint(choice, checkpoint_dir)


def refuse_used_run_dir(run_dir: Path, checkpoint_dir: Path) -> None:
    """resume=null is a fresh run: it must not append a second run to another's metrics."""
    used = [p for p in (run_dir / "metrics.jsonl", checkpoint_dir) if p.exists() and (p.is_file() or any(p.iterdir()))]
    if used:
        raise ResumeError(
            f"the run directory {run_dir} already holds a run ({', '.join(str(p) for p in used)}). "
            "Continue it with resume=auto (or resume=<checkpoint path>), or start a new run in a new "
            "directory (another hydra.run.dir=...)")


def flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return {prefix: node}
    flat = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    if not flat and prefix:
        flat[prefix] = node
    return flat


def changeable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in CHANGEABLE_KEYS)


def config_differences(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between the checkpoint's config and this run's."""
    before, after = flatten(saved), flatten(current)
    return sorted(k for k in before.keys() | after.keys()
                  if not changeable(k) and str(before.get(k, "<absent>")) != str(after.get(k, "<absent>")))


def check_config_change(saved: dict, current: dict, checkpoint: Path, allow: bool) -> None:
    differences = config_differences(saved, current)
    if not differences:
        return
    before, after = flatten(saved), flatten(current)
    listing = "; ".join(f"{k}: {before.get(k, '<absent>')} -> {after.get(k, '<absent>')}" for k in differences)
    if allow:
        log.warning("resuming with a changed config (resume.allow_config_change=true): %s", listing)
        return
    raise ResumeError(
        f"the config differs from the one checkpoint {checkpoint} was trained with: {listing}. "
        "Resume with the same settings (only train.max_steps, train.epochs, logging and checkpoint keys may "
        "change), or set resume.allow_config_change=true to continue anyway")


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the records up to `step` (the checkpoint's); returns how many were dropped."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = [line for line in lines if record_step(line) <= step]
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(line + "\n" for line in kept))
    temporary.replace(path)
    return len(lines) - len(kept)


def record_step(line: str) -> float:
    """A record's step; a line cut short by a kill counts as after every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")

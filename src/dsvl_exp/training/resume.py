"""Which checkpoint a run continues from (`resume`), and the checks around it: a fresh run refuses
a used run directory, a resume refuses a config that means something else, and the metrics
logged after the checkpoint's step (by the run that went on and died) are dropped."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dsvl_exp.config.meaning import ABSENT, flatten, resume_may_change, same_value, under
from dsvl_exp.errors import UserError
from dsvl_exp.files import read_jsonl, write_atomically
from dsvl_exp.repro.metrics import METRICS
from dsvl_exp.training.checkpoint import (
    COMPLETE_MARKER,
    LATEST,
    TAG_PATTERN,
    TRAINER_STATE,
    checkpoint_problem,
    newest_complete,
    read_latest,
    step_tags,
)

log = logging.getLogger(__name__)


class ResumeError(UserError, ValueError):
    """A run directory or checkpoint that this run may not start from or continue."""


def find_checkpoint(choice: str | None, checkpoint_dir: Path) -> Path | None:
    """resume=auto: the newest complete checkpoint in `checkpoint_dir` (None when it holds none);
    resume=PATH: a checkpoint folder, a checkpoint directory or a run directory. A checkpoint is
    complete when its completion marker is there and every file has the size it recorded."""
    if choice is None:
        return None
    if choice == "auto":
        return auto_checkpoint(checkpoint_dir)
    path = Path(choice).expanduser()
    if TAG_PATTERN.match(path.resolve().name) or (path / TRAINER_STATE).exists() or (path / COMPLETE_MARKER).exists():
        problem = checkpoint_problem(path)
        if problem:
            fallback = newest_complete(path.resolve().parent)
            raise ResumeError(f"resume={choice}: the checkpoint is not complete: {problem}. "
                              + (f"Resume from the complete checkpoint with resume={path.resolve().parent / fallback}"
                                 if fallback else "No complete checkpoint is beside it; start a fresh run"))
        return path
    for candidate_dir in (path, path / "checkpoints"):
        if (candidate_dir / LATEST).is_file() or step_tags(candidate_dir):
            found = auto_checkpoint(candidate_dir)
            if found is not None:
                return found
    raise ResumeError(f"resume={choice}: no complete checkpoint there (expected a folder with {COMPLETE_MARKER}, "
                      f"or a checkpoint directory / run directory holding one); "
                      "use resume=auto to continue the run directory given by hydra.run.dir")


def auto_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The checkpoint `latest` names; when `latest` is missing, dangling or names a damaged
    checkpoint, the newest complete one (with a warning). None only when the directory holds no
    checkpoint at all: a directory with checkpoints, none complete, is refused, never restarted."""
    tag = read_latest(checkpoint_dir)
    if tag is not None:
        return checkpoint_dir / tag
    latest_file = checkpoint_dir / LATEST
    named = latest_file.read_text().strip() if latest_file.is_file() else None
    if named is None:
        why = f"{latest_file} is missing"
    elif (checkpoint_dir / named).is_dir():
        why = f"{latest_file} names {named}, but {checkpoint_problem(checkpoint_dir / named)}"
    else:
        why = f"{latest_file} names {named!r}, which does not exist"
    fallback = newest_complete(checkpoint_dir)
    if fallback is not None:
        log.warning("%s; resuming from the newest complete checkpoint, %s", why, checkpoint_dir / fallback)
        return checkpoint_dir / fallback
    tags = step_tags(checkpoint_dir)
    if tags or named is not None:
        listing = "; ".join(f"{tag}: {checkpoint_problem(checkpoint_dir / tag)}" for tag in tags) or "no step folders"
        raise ResumeError(f"resume=auto: {checkpoint_dir} holds no complete checkpoint to continue from ({why}; "
                          f"{listing}). Nothing was changed. Start a fresh run in another directory "
                          "(hydra.run.dir=...), or move these folders away")
    return None


def check_run_dir_use(run_dir: Path, checkpoint_dir: Path, choice: str | None) -> None:
    """What the entry point checks before it writes anything: a fresh run needs an unused run
    directory, a resume a checkpoint it can find (the ranks decide the same again in the recipe)."""
    if choice is None:
        refuse_used_run_dir(run_dir, checkpoint_dir)
    else:
        find_checkpoint(choice, checkpoint_dir)


def refuse_used_run_dir(run_dir: Path, checkpoint_dir: Path) -> None:
    """resume=null is a fresh run: it must not append a second run to another's metrics."""
    used = [p for p in (run_dir / METRICS, checkpoint_dir) if p.exists() and (p.is_file() or any(p.iterdir()))]
    if used:
        raise ResumeError(
            f"the run directory {run_dir} already holds a run ({', '.join(str(p) for p in used)}). "
            "Continue it with resume=auto (or resume=<checkpoint path>), or start a new run in a new "
            "directory (another hydra.run.dir=...)")


# Keys the saved weights and optimizer shards are laid out for: a checkpoint cannot load into a run
# that changes them, resume.allow_config_change or not.
LOAD_BEARING_KEYS = ("vision", "decoder", "projection", "lora", "zero.stage", "train.vision", "train.projection",
                     "train.embeddings", "train.decoder", "train.precision")


def load_bearing(key: str) -> bool:
    return under(key, LOAD_BEARING_KEYS)


def check_world_size(trainer_state: dict, world_size: int, checkpoint: Path) -> None:
    saved = trainer_state.get("world_size")
    if saved is not None and saved != world_size:
        raise ResumeError(f"checkpoint {checkpoint} was written by {saved} rank(s) and this run has {world_size}: its "
                          "ZeRO shards cannot load into another world size. Resume with the same number of ranks "
                          f"(launcher.nproc_per_node={saved}, or the same torchrun / deepspeed launch)")


def schema_defaults() -> dict:
    """The schema's default of every dotted key (a key added to the schema after a checkpoint was
    written is absent from its config; at its default it changes nothing)."""
    from omegaconf import OmegaConf

    from dsvl_exp.config import schema

    def plain(node) -> dict:
        return OmegaConf.to_container(OmegaConf.structured(node), resolve=False, enum_to_str=True)

    defaults = flatten(plain(schema.Config))
    for group, node in (("data", schema.DataConfig), ("zero", schema.ZeroConfig), ("launcher", schema.LauncherConfig)):
        defaults.update(flatten(plain(node), f"{group}."))
    return defaults


def config_differences(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between the checkpoint's config and this run's, by the same
    comparison `diff` makes (config/meaning.py), except the keys a resume may change."""
    before, after = flatten(saved), flatten(current)
    defaults = schema_defaults() if after.keys() - before.keys() else {}

    def differs(key: str) -> bool:
        if key not in before and key in defaults and same_value(after.get(key), defaults[key]):
            return False
        return not same_value(before.get(key, ABSENT), after.get(key, ABSENT))

    return sorted(k for k in before.keys() | after.keys() if not resume_may_change(k) and differs(k))


def check_config_change(saved: dict, current: dict, checkpoint: Path, allow: bool) -> None:
    differences = config_differences(saved, current)
    if not differences:
        return
    before, after = flatten(saved), flatten(current)
    structural = [k for k in differences if load_bearing(k)]
    if structural:
        changes = "; ".join(f"{k}: {before.get(k, ABSENT)} -> {after.get(k, ABSENT)}" for k in structural)
        raise ResumeError(
            f"checkpoint {checkpoint} cannot load into this run: {changes}. These keys decide the shapes and layout "
            "of the saved weights and optimizer state (resume.allow_config_change does not cover them); resume with "
            "the checkpoint's values, or start a fresh run in a new hydra.run.dir")
    listing = "; ".join(f"{k}: {before.get(k, ABSENT)} -> {after.get(k, ABSENT)}" for k in differences)
    if allow:
        log.warning("resuming with a changed config (resume.allow_config_change=true): %s", listing)
        return
    raise ResumeError(
        f"the config differs from the one checkpoint {checkpoint} was trained with: {listing}. "
        "Resume with the same settings (only train.max_steps, train.epochs, logging, checkpoint and cache "
        "directory keys may change), or set resume.allow_config_change=true to continue anyway")


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the records up to `step` (the checkpoint's); returns how many were dropped: the later
    ones, and a line cut short by a kill (it counts as after every checkpoint)."""
    content = read_jsonl(path)
    kept = [r for r in content.values
            if isinstance(r, dict) and isinstance(r.get("step"), (int, float)) and r["step"] <= step]
    if content.values or content.bad_lines:
        write_atomically(path, "".join(json.dumps(record) + "\n" for record in kept))  # as training/logging.py writes
    return len(content.values) + len(content.bad_lines) - len(kept)

"""Training checkpoints: DeepSpeed's own save/load (every rank writes its ZeRO shards), plus what
the engine does not hold, published atomically.

    <checkpoint dir>/                 default <run dir>/checkpoints
      step-00000120/                  one complete checkpoint = DeepSpeed's tag folder, plus
        config.yaml                   the resolved run config
        trainer_state.json            step, epoch and position in it, best metric so far, data fingerprint, ...
        rank_state_<r>.json           per rank: RNG states (python, numpy, torch), data position, logging window
        checkpoint_complete.json      written last: the size of every other file (a folder without it,
                                      or with a file of another size, is never resumed from)
      latest                          DeepSpeed's text file naming the newest complete tag
      best -> step-00000100           a relative symlink to the best checkpoint by eval.monitor

A save writes into `.staging-<tag>`, renames it into place once every rank has written, and only
then replaces `latest` (write + os.replace): a crash mid-save leaves the previous checkpoint and
`latest` as they were. A failed write (disk full) removes the staging folder and raises
CheckpointError on every rank, naming the intact previous checkpoint. Older step folders are deleted only after that (keep_last), never `best`'s.
`deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(<checkpoint dir>, tag)`
reads any tag, `best` included.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from dsvl_exp.errors import UserError
from dsvl_exp.files import replace_folder, write_atomically
from dsvl_exp.training import distributed
from dsvl_exp.training.safe_loading import checkpoint_loading

log = logging.getLogger(__name__)

class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be written or loaded as asked; the message says why and what to do."""


LATEST = "latest"
BEST = "best"
TRAINER_STATE = "trainer_state.json"
COMPLETE_MARKER = "checkpoint_complete.json"  # as LLaMA-Factory's trainer: trust no folder without it
CONFIG = "config.yaml"
STAGING_PREFIX = ".staging-"
TAG_PATTERN = re.compile(r"^step-(\d{8})$")


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def rank_state_file(rank: int) -> str:
    return f"rank_state_{rank}.json"


# ---- RNG states --------------------------------------------------------------------------------
def rng_state() -> dict:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


# ---- writing -----------------------------------------------------------------------------------
def local_weights(param: torch.Tensor) -> torch.Tensor:
    """This rank's real elements of a parameter. ZeRO-3 keeps a partition of ceil(numel / ranks)
    elements per rank (`ds_tensor`); the last ranks' are padded past the parameter's end with
    memory DeepSpeed never writes, which may hold NaN and must not count."""
    partition = getattr(param, "ds_tensor", None)
    if partition is None:
        return param
    size = partition.numel()
    real = max(0, min(size, param.ds_numel - distributed.rank() * size))
    return partition.narrow(0, 0, real)


def parameters_finite(engine) -> bool:
    """Every rank's (partition of the) weights finite: a NaN model is never saved."""
    local = [local_weights(param) for param in engine.module.parameters()]
    flags = [torch.isfinite(tensor.detach()).all() for tensor in local if tensor.numel()]
    bad = 0.0 if not flags or bool(torch.stack(flags).all()) else 1.0  # one host read, not one per parameter
    if distributed.world_size() > 1:
        bad = distributed.all_reduce_sum([bad])[0]
    return bad == 0.0


def write_json(path: Path, payload: dict) -> None:
    with open(path, "w") as f:
        json.dump(payload, f)
        f.flush()
        os.fsync(f.fileno())


def file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def write_complete_marker(folder: Path, step: int) -> None:
    """The last file of a checkpoint: its step and the size of every other file in it."""
    write_json(folder / COMPLETE_MARKER, {"step": step, "files": file_sizes(folder)})


def save_checkpoint(engine, checkpoint_dir: Path, step: int, trainer_state: dict, rank_state: dict,
                    config_yaml: str) -> Path:
    """One complete checkpoint of step `step`, published atomically; returns its folder."""
    tag = tag_for(step)
    staging = checkpoint_dir / f"{STAGING_PREFIX}{tag}"
    final = checkpoint_dir / tag
    rank_zero = distributed.is_rank_zero()
    if rank_zero:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for leftover in checkpoint_dir.glob(f"{STAGING_PREFIX}*"):  # from a save that crashed
            shutil.rmtree(leftover, ignore_errors=True)
    distributed.barrier()
    write_error = None
    try:
        engine.save_checkpoint(str(checkpoint_dir), tag=staging.name, client_state={"step": step}, save_latest=False)
        write_json(staging / rank_state_file(distributed.rank()), rank_state)
    except OSError as error:  # disk full, quota, permissions: every rank must hear of it
        write_error = error
    raise_if_any_rank_failed(write_error, checkpoint_dir, staging, tag)  # every rank's shards are on disk
    if rank_zero:
        try:
            write_json(staging / TRAINER_STATE, trainer_state)
            (staging / CONFIG).write_text(config_yaml)
            write_complete_marker(staging, step)
            if final.exists():  # a later timeline abandoned by resume=<older checkpoint>
                shutil.rmtree(final)
            os.replace(staging, final)
            write_atomically(checkpoint_dir / LATEST, tag, fsync=True)
        except OSError as error:
            write_error = error
    raise_if_any_rank_failed(write_error, checkpoint_dir, staging, tag)
    return final


def raise_if_any_rank_failed(error: OSError | None, checkpoint_dir: Path, staging: Path, tag: str) -> None:
    """A barrier that also tells every rank whether any rank failed to write; on failure the
    staging folder goes and every rank raises the same kind of error."""
    failed = 1.0 if error is not None else 0.0
    if distributed.world_size() > 1:
        failed = distributed.all_reduce_sum([failed])[0]
    if not failed:
        return
    if distributed.is_rank_zero():
        shutil.rmtree(staging, ignore_errors=True)
    previous = read_latest(checkpoint_dir)
    if error is None:
        reason = "another rank failed to write its part"
    elif error.errno is None:
        reason = str(error)
    else:
        reason = f"{error.strerror} ({errno.errorcode.get(error.errno, error.errno)}: {error.filename})"
    kept = (f"the previous checkpoint {checkpoint_dir / previous} is intact" if previous
            else "no earlier checkpoint exists")
    raise CheckpointError(f"could not write checkpoint {tag} in {checkpoint_dir}: {reason}. Nothing partial was "
                          f"left behind and {kept}. Free space (or fix the file system), then continue with "
                          "resume=auto") from error


def copy_folder(source: Path, target: Path) -> None:
    """`target` becomes a copy of `source`, renamed into place (never half-written)."""
    replace_folder(target, lambda folder: shutil.copytree(source, folder))


def publish_best(checkpoint_dir: Path, tag: str) -> None:
    """`best` -> tag, swapped atomically (a relative symlink, so the run directory can move)."""
    temporary = checkpoint_dir / f".{BEST}.tmp"
    if temporary.is_symlink() or temporary.exists():
        temporary.unlink()
    os.symlink(tag, temporary)
    os.replace(temporary, checkpoint_dir / BEST)


def best_tag(checkpoint_dir: Path) -> str | None:
    link = checkpoint_dir / BEST
    return os.readlink(link) if link.is_symlink() else None


def step_tags(checkpoint_dir: Path) -> list[str]:
    if not checkpoint_dir.is_dir():
        return []
    return sorted(p.name for p in checkpoint_dir.iterdir() if TAG_PATTERN.match(p.name) and p.is_dir())


def prune(checkpoint_dir: Path, keep_last: int | None) -> list[str]:
    """Delete all but the newest `keep_last` step checkpoints; `latest`'s and `best`'s are kept
    whatever their age. Runs after `latest` names the newer one, so a crash here loses nothing."""
    if keep_last is None:
        return []
    tags = step_tags(checkpoint_dir)
    kept = set(tags[-keep_last:] if keep_last > 0 else []) | {best_tag(checkpoint_dir), read_latest(checkpoint_dir)}
    doomed = [tag for tag in tags if tag not in kept]
    for tag in doomed:
        shutil.rmtree(checkpoint_dir / tag)
    return doomed


# ---- reading -----------------------------------------------------------------------------------
def read_latest(checkpoint_dir: Path) -> str | None:
    """The tag `latest` names when that checkpoint is complete, else None."""
    path = checkpoint_dir / LATEST
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    return tag if TAG_PATTERN.match(tag) and not checkpoint_problem(checkpoint_dir / tag) else None


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is no complete checkpoint (None when it is): no completion marker, or a file
    missing or of another size than the marker recorded (truncated, replaced)."""
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return f"it has no {COMPLETE_MARKER} (its save never finished)"
    try:
        recorded = json.loads(marker.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return f"its {COMPLETE_MARKER} is unreadable"
    for name, size in recorded.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} is {path.stat().st_size} bytes, {size} when it was saved (truncated or replaced)"
    return None


def newest_complete(checkpoint_dir: Path) -> str | None:
    """The newest step folder that passes `checkpoint_problem`, whatever `latest` says."""
    for tag in reversed(step_tags(checkpoint_dir)):
        if not checkpoint_problem(checkpoint_dir / tag):
            return tag
    return None


def read_trainer_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / TRAINER_STATE).read_text())


def load_checkpoint(engine, checkpoint: Path, trust: bool = False) -> tuple[dict, dict]:
    """Engine state (weights, optimizer, schedule) into `engine`; returns (trainer state, this
    rank's state). `checkpoint` is a tag folder (`best` resolves to its target). Its pickles are
    read weights-only unless `trust` (safe_loading.py)."""
    checkpoint = checkpoint.resolve()
    with checkpoint_loading(trust, checkpoint):
        load_path, _ = engine.load_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load the checkpoint {checkpoint}")
    rank_file = checkpoint / rank_state_file(distributed.rank())
    if not rank_file.is_file():
        raise CheckpointError(f"{checkpoint} has no {rank_file.name}: it was written by fewer ranks than this run has "
                         f"({distributed.world_size()}); resume with the same launcher.nproc_per_node")
    return read_trainer_state(checkpoint), json.loads(rank_file.read_text())

"""Export the trained model from the DeepSpeed engine into a `from_pretrained` folder.

Called on every rank: under ZeRO-3 each module's parameters are gathered in turn (only rank 0
keeps a copy, on CPU), so no rank ever holds two copies of the model; rank 0 writes the folder
into a temporary sibling and renames it into place, so a crash never leaves a half-written
export under the final name."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from dsvl_exp import collectives
from dsvl_exp.errors import UserError
from dsvl_exp.files import replace_folder
from dsvl_exp.models.pretrained import save_pretrained
from dsvl_exp.training.checkpoint import CONFIG as CHECKPOINT_CONFIG
from dsvl_exp.training.checkpoint import LATEST, TRAINER_STATE
from dsvl_exp.training.safe_loading import checkpoint_loading

log = logging.getLogger(__name__)


def _is_rank_zero() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def gathered_state_dict(module: nn.Module) -> dict[str, torch.Tensor] | None:
    """The full state dict (parameters and persistent buffers) on CPU on rank 0, None elsewhere.
    Must be called on all ranks when parameters are ZeRO-3 partitioned."""
    if not any(hasattr(p, "ds_id") for p in module.parameters()):
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()} if _is_rank_zero() else None
    import deepspeed

    state: dict[str, torch.Tensor] | None = {} if _is_rank_zero() else None
    first_key_of: dict[int, str] = {}  # ds_id -> key: shared parameters stay one tensor

    def visit(current: nn.Module, prefix: str) -> None:
        local = list(current.parameters(recurse=False))
        with deepspeed.zero.GatheredParameters(local, modifier_rank=None):
            if state is not None:
                for name, param in current.named_parameters(recurse=False):
                    key = prefix + name
                    if param.ds_id in first_key_of:
                        state[key] = state[first_key_of[param.ds_id]]
                    else:
                        state[key] = param.detach().cpu().clone()
                        first_key_of[param.ds_id] = key
                for name, buffer in current.named_buffers(recurse=False):
                    if buffer is not None and name not in current._non_persistent_buffers_set:
                        state[prefix + name] = buffer.detach().cpu().clone()
        for name, child in current.named_children():
            visit(child, f"{prefix}{name}.")

    visit(module, "")
    return state


def export_from_engine(engine, tokenizer, out_dir: str | Path, *, keep_adapters: bool = False,
                       training_summary: dict | None = None) -> Path:
    """Write `out_dir` (see models/pretrained.py) from the engine's model. Call on ALL ranks.
    LoRA is merged unless `keep_adapters`, which writes peft adapters beside the base weights."""
    out = Path(out_dir)
    started = time.perf_counter()
    state = gathered_state_dict(engine.module)
    if _is_rank_zero():
        replace_folder(out, lambda folder: save_pretrained(engine.module, folder, state_dict=state, tokenizer=tokenizer,
                                                           keep_adapters=keep_adapters, training_summary=training_summary))
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        log.info("exported the model to %s (%.1f MB, %.1f s)", out, size / 1e6, time.perf_counter() - started)
    collectives.barrier()
    return out


# ---- from a training checkpoint (offline, one process) ---------------------------------------
class ExportError(UserError, ValueError):
    """A source that cannot be exported; the message names the path and the fix."""


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory (its `checkpoints/latest`), a checkpoints directory (its `latest`) or one
    checkpoint tag folder -> the tag folder."""
    folder = Path(path).expanduser()
    if (folder / "checkpoints").is_dir():  # a run directory (its own config.yaml is not a checkpoint's)
        folder = folder / "checkpoints"
    latest = folder / LATEST
    if latest.exists():
        folder = latest.resolve() if latest.is_dir() else folder / latest.read_text().strip()
    if not (folder / CHECKPOINT_CONFIG).is_file() or not any(folder.glob("*model_states.pt")):
        raise ExportError(
            f"{path} is neither a run directory with checkpoints/latest nor a checkpoint folder (a DeepSpeed tag "
            f"folder holding {CHECKPOINT_CONFIG}); pass <run dir> or <run dir>/checkpoints/step-NNNNNNNN (a run "
            "writes checkpoints with checkpoint.every_n_steps and at its end)")
    return folder


def card_summary(step: int, last_train: dict, last_eval: dict) -> dict:
    """The model card's "How it was trained": the step and the last train and eval numbers, the same
    whether the folder is written at the end of the run or later from its checkpoint."""
    return {"step": step, **last_train, **last_eval}


def checkpoint_weights(folder: Path) -> dict:
    """The fp32 weights of a tag folder: ZeRO-1/2/3 partitions consolidated by DeepSpeed's
    zero_to_fp32; a stage-0 checkpoint (one fp32 rank, zero.single_rank=stage0) holds the whole
    module in its model states file already."""
    if any(folder.glob("*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
    import torch

    (model_states,) = folder.glob("mp_rank_*_model_states.pt")
    return torch.load(model_states, map_location="cpu")["module"]


def export_checkpoint(checkpoint_path: str | Path, out_dir: str | Path, keep_adapters: bool = False,
                      trust: bool = False) -> Path:
    """Rebuild the model from the checkpoint's config.yaml, consolidate its ZeRO-2/3 shards (or read a stage-0 model) in
    fp32 (deepspeed.utils.zero_to_fp32) and write the `from_pretrained` folder. One process, no
    process group. The DeepSpeed files are torch pickles: they are read weights-only
    (training/safe_loading.py) unless `trust`; the export folder itself is safetensors."""
    import json

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from dsvl_exp.models.build import unpartitioned_construction
    from dsvl_exp.training.model_setup import build_model, configure_training

    started = time.perf_counter()
    folder = resolve_checkpoint(checkpoint_path)
    cfg = OmegaConf.load(folder / CHECKPOINT_CONFIG)
    tokenizer = instantiate(cfg.tokenizer)
    with unpartitioned_construction():
        model = build_model(cfg, tokenizer)
    configure_training(model, cfg)  # the same LoRA layers as in training, so the keys match
    with checkpoint_loading(trust, folder):
        state = checkpoint_weights(folder)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ExportError(f"{folder}: the checkpoint does not fit the model its {CHECKPOINT_CONFIG} describes: "
                          f"missing {missing[:10]} ({len(missing)}), unexpected {unexpected[:10]} ({len(unexpected)})")
    model.load_state_dict(state, strict=True)
    summary = {"checkpoint": folder.name}
    if (folder / TRAINER_STATE).is_file():
        state = json.loads((folder / TRAINER_STATE).read_text())
        summary = card_summary(state["step"], state.get("last_train") or {}, state.get("last_eval") or {})
    out = Path(out_dir)
    replace_folder(out, lambda folder: save_pretrained(model, folder, tokenizer=tokenizer, keep_adapters=keep_adapters,
                                                       training_summary=summary))
    log.info("exported %s to %s (%.1f s)", folder, out, time.perf_counter() - started)
    return out

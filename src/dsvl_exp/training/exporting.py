"""Export the trained model from the DeepSpeed engine into a `from_pretrained` folder.

Called on every rank: under ZeRO-3 each module's parameters are gathered in turn (only rank 0
keeps a copy, on CPU), so no rank ever holds two copies of the model; rank 0 writes the folder
into a temporary sibling and renames it into place, so a crash never leaves a half-written
export under the final name."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from dsvl_exp.models.pretrained import save_pretrained

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
        partial = out.with_name(f".{out.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        save_pretrained(engine.module, partial, state_dict=state, tokenizer=tokenizer, keep_adapters=keep_adapters,
                        training_summary=training_summary)
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        log.info("exported the model to %s (%.1f MB, %.1f s)", out, size / 1e6, time.perf_counter() - started)
    if dist.is_initialized():
        dist.barrier()
    return out

"""Which parts of the model train."""

from __future__ import annotations

import logging

from torch import nn

log = logging.getLogger(__name__)


def resolve_trainable(choice, pretrained: str | None, key: str) -> bool:
    """`auto` trains a part only when it is randomly initialised (nothing to keep)."""
    if isinstance(choice, bool):
        return choice
    if choice == "auto":
        return not pretrained
    raise ValueError(f"{key}={choice!r}: expected true, false or auto")


def apply_freezing(model: nn.Module, vision: bool, projection: bool, embeddings: bool, decoder: bool) -> None:
    model.vision.requires_grad_(vision)
    model.projection.requires_grad_(projection)
    model.decoder.requires_grad_(decoder)
    model.decoder.get_input_embeddings().requires_grad_(embeddings)


def count_parameters(model: nn.Module) -> dict[str, dict[str, int]]:
    """Total and trainable parameter counts per top-level module (shared tensors once)."""
    counts: dict[str, dict[str, int]] = {}
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        numel = getattr(param, "ds_numel", param.numel())
        module = name.split(".")[0]
        if module == "decoder" and "embed_tokens" in name:
            module = "embeddings"
        entry = counts.setdefault(module, {"total": 0, "trainable": 0})
        entry["total"] += numel
        entry["trainable"] += numel if param.requires_grad else 0
    return counts

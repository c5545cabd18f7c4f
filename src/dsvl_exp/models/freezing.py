"""Which parts of the model train: true, false, auto (only when randomly initialised) or lora
(the part frozen, LoRA adapters on it trained)."""

from __future__ import annotations

import logging

from torch import nn

from dsvl_exp.models.lora import is_lora_parameter

log = logging.getLogger(__name__)


def resolve_trainable(choice, pretrained: str | None, key: str, allow_lora: bool = False):
    """True, False or "lora". `auto` trains a part only when it is randomly initialised."""
    if isinstance(choice, bool):
        return choice
    if choice == "auto":
        return not pretrained
    if choice == "lora" and allow_lora:
        return "lora"
    expected = "true, false, auto or lora" if allow_lora else "true, false or auto"
    raise ValueError(f"{key}={choice!r}: expected {expected}")


def _set_trainable(module: nn.Module, choice) -> None:
    module.requires_grad_(choice is True)
    if choice == "lora":
        for name, param in module.named_parameters():
            if is_lora_parameter(name):
                param.requires_grad_(True)


def apply_freezing(model: nn.Module, vision, projection: bool, embeddings: bool, decoder) -> None:
    """`vision` and `decoder` may be "lora" (adapters already injected)."""
    _set_trainable(model.vision, vision)
    _set_trainable(model.projection, projection)
    _set_trainable(model.decoder, decoder)
    model.decoder.get_input_embeddings().requires_grad_(embeddings)
    # the fixed sin-cos tables (resampler / perceiver `pos_embed`) never train
    for name, param in model.named_parameters():
        if name.endswith("pos_embed"):
            param.requires_grad_(False)


def count_parameters(model: nn.Module) -> dict[str, dict[str, int]]:
    """Total and trainable parameter counts per top-level module (shared tensors once); LoRA
    adapters are listed apart as `<module>_lora`."""
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
        if is_lora_parameter(name):
            module = f"{module}_lora"
        entry = counts.setdefault(module, {"total": 0, "trainable": 0})
        entry["total"] += numel
        entry["trainable"] += numel if param.requires_grad else 0
    return counts

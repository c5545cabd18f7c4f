"""What the rest of the model reads from a vision encoder: the contract every tower meets.

A tower is an `nn.Module` mapping images [N, 3, S, S] to features [N, num_tokens, hidden_size].
The projection builders, the splice (tokens per image), LoRA (target modules), the data
pipeline (image processor) and export (architecture) read only these names, so a new encoder
plugs in by providing them; `check_vision_tower` says which one is missing."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class VisionTower(Protocol):
    hidden_size: int  # width of the features it returns
    num_tokens: int  # features per image (CLS included when it has one)
    image_size: int  # square input side in pixels
    image_processor: Any  # a transformers image processor (save_pretrained / from_pretrained)
    has_cls_token: bool  # the first feature is a CLS token (the perceiver drops it)
    resamples: bool  # already a learned-query resampler (no second one may follow)
    num_heads: int  # attention heads of its blocks (the vit projection copies them)
    intermediate_size: int  # MLP width of its blocks
    hidden_act: str  # MLP activation of its blocks
    lora_target_modules: Any  # default LoRA targets: module-name suffixes or one regex

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor: ...

    def gradient_checkpointing_enable(self) -> None: ...

    def architecture(self) -> dict:
        """JSON-able description that `models.build.build_vision_from_architecture` rebuilds
        the same (randomly initialised) tower from, without any pretrained folder."""
        ...


VISION_TOWER_ATTRIBUTES = (
    "hidden_size", "num_tokens", "image_size", "image_processor", "has_cls_token", "resamples", "num_heads",
    "intermediate_size", "hidden_act", "lora_target_modules", "gradient_checkpointing_enable", "architecture",
)


def check_vision_tower(tower: object) -> None:
    """Fail at build time, naming what is missing, instead of at the first forward."""
    missing = [name for name in VISION_TOWER_ATTRIBUTES if not hasattr(tower, name)]
    if missing:
        raise TypeError(f"{type(tower).__name__} is not a vision tower: it lacks {missing} (see models/vision_tower.py)")

"""Projections from vision features to the decoder's embedding space.

Every projection reports `output_tokens(vision_tokens)`: how many visual tokens one image
becomes, which the splice needs before any image is seen.
"""

from __future__ import annotations


import torch
from torch import nn
from transformers import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from .resampler import Resampler
from .vision_tower import VisionTower


class BaselineProjection(nn.Module):
    """Linear(vision -> decoder) + LayerNorm(eps 1e-12): the reference's default."""

    def __init__(self, vision_hidden_size: int, decoder_hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(vision_hidden_size, decoder_hidden_size)
        self.norm = nn.LayerNorm(decoder_hidden_size, eps=1e-12)

    def output_tokens(self, vision_tokens: int) -> int:
        return vision_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(features))


class ViTProjection(nn.Module):
    """One CLIP encoder block at the vision width (the reference's `vit`), then Linear + LayerNorm."""

    def __init__(self, vision_hidden_size: int, decoder_hidden_size: int, num_heads: int,
                 intermediate_size: int, hidden_act: str = "quick_gelu"):
        super().__init__()
        config = CLIPVisionConfig(hidden_size=vision_hidden_size, num_attention_heads=num_heads,
                                  intermediate_size=intermediate_size, hidden_act=hidden_act)
        config._attn_implementation = "sdpa"
        self.encoder_layer = CLIPEncoderLayer(config)
        self.linear = nn.Linear(vision_hidden_size, decoder_hidden_size)
        self.norm = nn.LayerNorm(decoder_hidden_size, eps=1e-12)

    def output_tokens(self, vision_tokens: int) -> int:
        return vision_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(self.encoder_layer(features, attention_mask=None)))


def _refuse_resampling_tower(name: str, vision_resamples: bool) -> None:
    if vision_resamples:
        raise ValueError(
            f"projection={name} cannot follow vision=qwen: the Qwen-VL tower already resamples to its own "
            "query tokens (the reference allows only projection=baseline there); use projection=baseline"
        )


def build_baseline_projection(vision_hidden_size: int, decoder_hidden_size: int) -> BaselineProjection:
    return BaselineProjection(vision_hidden_size, decoder_hidden_size)


def build_vit_projection(vision_hidden_size: int, decoder_hidden_size: int, vision_num_heads: int,
                         vision_intermediate_size: int, vision_hidden_act: str = "quick_gelu",
                         vision_resamples: bool = False) -> ViTProjection:
    """The block copies the encoder's heads, MLP size and activation (quick_gelu for CLIP-L)."""
    _refuse_resampling_tower("vit", vision_resamples)
    return ViTProjection(vision_hidden_size, decoder_hidden_size, vision_num_heads, vision_intermediate_size,
                         vision_hidden_act)


def build_perceiver_projection(vision_hidden_size: int, decoder_hidden_size: int, num_queries: int = 256,
                               vision_has_cls_token: bool = True, vision_resamples: bool = False) -> Resampler:
    """The reference's perceiver: `num_queries` learned queries, decoder_hidden/128 heads (at
    least 1), `kv_proj` with bias, every LayerNorm eps 1e-12, CLS dropped, LayerNorm + Linear out."""
    _refuse_resampling_tower("perceiver", vision_resamples)
    return Resampler(
        num_queries, decoder_hidden_size, max(1, decoder_hidden_size // 128), vision_hidden_size,
        layer_norm_eps=1e-12, kv_bias=True, always_project_kv=True,
        drop_cls_token=vision_has_cls_token, output_head=True, name="projection.num_queries",
    )


# ---- the `projection` group's targets -------------------------------------------------------
# `hydra.utils.instantiate(cfg.projection, vision=tower, decoder_hidden_size=...)` calls one of
# these: each reads what it needs from the tower's contract (models/vision_tower.py) by name and
# passes it on to its builder above. A user's own projection takes the same two arguments.
def baseline_projection_after(vision: VisionTower, decoder_hidden_size: int) -> BaselineProjection:
    return build_baseline_projection(vision.hidden_size, decoder_hidden_size)


def vit_projection_after(vision: VisionTower, decoder_hidden_size: int) -> ViTProjection:
    return build_vit_projection(vision.hidden_size, decoder_hidden_size, vision.num_heads, vision.intermediate_size,
                                vision.hidden_act, vision.resamples)


def perceiver_projection_after(vision: VisionTower, decoder_hidden_size: int, num_queries: int = 256) -> Resampler:
    return build_perceiver_projection(vision.hidden_size, decoder_hidden_size, num_queries, vision.has_cls_token,
                                      vision.resamples)


# projection name (config.json's `projection.type`) -> target; the names of `conf/projection/`
PROJECTION_BUILDERS = {
    "baseline": baseline_projection_after,
    "vit": vit_projection_after,
    "perceiver": perceiver_projection_after,
}

"""Projections from vision features to the decoder's embedding space.

Every projection reports `output_tokens(vision_tokens)`: how many visual tokens one image
becomes, which the splice needs before any image is seen.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from dsvl_exp.models.qwen_vit import TruncNormalLinear, resize_positions, sincos_2d


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


class PerceiverProjection(nn.Module):
    """Learned queries on a square grid (fixed sin-cos positions) cross-attend to the patch
    tokens (CLS dropped; the key positions are the query grid resized to the patch grid)."""

    def __init__(self, vision_hidden_size: int, decoder_hidden_size: int, num_queries: int = 256,
                 drop_cls_token: bool = True):
        super().__init__()
        grid = int(math.sqrt(num_queries))
        if grid * grid != num_queries:
            raise ValueError(f"projection.num_queries={num_queries} must be a square (a query grid), e.g. 256")
        self.num_queries = num_queries
        self.drop_cls_token = drop_cls_token
        self.query = nn.Parameter(torch.empty(num_queries, decoder_hidden_size))
        self.pos_embed = nn.Parameter(sincos_2d(decoder_hidden_size, grid), requires_grad=False)
        self.kv_proj = TruncNormalLinear(vision_hidden_size, decoder_hidden_size)
        self.ln_q = nn.LayerNorm(decoder_hidden_size, eps=1e-12)
        self.ln_kv = nn.LayerNorm(decoder_hidden_size, eps=1e-12)
        self.attn = nn.MultiheadAttention(decoder_hidden_size, max(1, decoder_hidden_size // 128), batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(decoder_hidden_size), TruncNormalLinear(decoder_hidden_size, decoder_hidden_size))
        nn.init.trunc_normal_(self.query, std=0.02)

    def output_tokens(self, vision_tokens: int) -> int:
        return self.num_queries

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.drop_cls_token:
            features = features[:, 1:]
        key_positions = resize_positions(self.pos_embed, features.shape[1])
        keys = self.ln_kv(self.kv_proj(features))
        query = (self.ln_q(self.query) + self.pos_embed).unsqueeze(0).expand(features.shape[0], -1, -1)
        attended = self.attn(query, keys + key_positions, keys, need_weights=False)[0]
        return self.out(attended)


def _refuse_resampling_tower(name: str, vision_resamples: bool) -> None:
    if vision_resamples:
        raise ValueError(
            f"projection={name} cannot follow vision=qwen: the Qwen-VL tower already resamples to its own "
            "query tokens (the reference allows only projection=baseline there); use projection=baseline"
        )


def build_baseline_projection(vision_hidden_size: int, decoder_hidden_size: int, **vision_facts) -> BaselineProjection:
    return BaselineProjection(vision_hidden_size, decoder_hidden_size)


def build_vit_projection(vision_hidden_size: int, decoder_hidden_size: int, vision_num_heads: int,
                         vision_intermediate_size: int, vision_resamples: bool = False,
                         vision_hidden_act: str = "quick_gelu", **vision_facts) -> ViTProjection:
    """The block copies the encoder's heads, MLP size and activation (quick_gelu for CLIP-L)."""
    _refuse_resampling_tower("vit", vision_resamples)
    return ViTProjection(vision_hidden_size, decoder_hidden_size, vision_num_heads, vision_intermediate_size,
                         vision_hidden_act)


def build_perceiver_projection(vision_hidden_size: int, decoder_hidden_size: int, num_queries: int = 256,
                               vision_has_cls_token: bool = True, vision_resamples: bool = False,
                               **vision_facts) -> PerceiverProjection:
    _refuse_resampling_tower("perceiver", vision_resamples)
    return PerceiverProjection(vision_hidden_size, decoder_hidden_size, num_queries, drop_cls_token=vision_has_cls_token)

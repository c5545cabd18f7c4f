"""Learned queries on a square grid that cross-attend to patch tokens: Qwen-VL's attention-pool
resampler and, configured the reference's way, the `perceiver` projection adapted from it.
One implementation for both, so the two cannot drift apart."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sincos_2d(embed_dim: int, grid_size: int) -> torch.Tensor:
    """[grid_size**2, embed_dim] fixed 2-D sin-cos table, MAE layout (first half encodes the
    grid's second meshgrid axis, as Qwen-VL's `get_2d_sincos_pos_embed`)."""
    if embed_dim % 4:
        raise ValueError(f"a 2-D sin-cos position table needs a width divisible by 4, got {embed_dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    grid_w, grid_h = torch.meshgrid(coords, coords, indexing="xy")  # meshgrid(w, h), w first

    def one_axis(positions: torch.Tensor, dim: int) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
        angles = positions.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([one_axis(grid_w, embed_dim // 2), one_axis(grid_h, embed_dim // 2)], dim=1)
    return table.float()


def resize_positions(table: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Bicubic resize of a square [side**2, dim] table to [num_tokens, dim] (a square grid)."""
    source, target = int(math.sqrt(table.shape[0])), int(math.sqrt(num_tokens))
    if source == target:
        return table
    grid = table.float().reshape(1, source, source, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(target, target), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).flatten(0, 2).to(table.dtype)


class TruncNormalLinear(nn.Linear):
    """nn.Linear initialised trunc_normal(0.02) / zero bias by itself: under ZeRO-3's zero.Init
    a child's weights are partitioned once its constructor returns, so a parent-level init loop
    would touch only empty shards."""

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.weight, std=0.02)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class Resampler(nn.Module):
    """Learned queries (a square grid, fixed sin-cos positions) cross-attend to the patch tokens;
    the key positions are the query grid resized to the patch grid.

    Qwen-VL's attention pool: LayerNorm eps 1e-6, a bias-free `kv_proj` only when the widths
    differ. The reference's perceiver projection: eps 1e-12, `kv_proj` with bias always, the CLS
    token dropped first, and an output LayerNorm + Linear (`out`)."""

    def __init__(self, num_queries: int, embed_dim: int, num_heads: int, kv_dim: int,
                 layer_norm_eps: float = 1e-6, kv_bias: bool = False, always_project_kv: bool = False,
                 drop_cls_token: bool = False, output_head: bool = False, name: str = "vision.num_queries"):
        super().__init__()
        grid = int(math.sqrt(num_queries))
        if grid * grid != num_queries:
            raise ValueError(f"{name}={num_queries} must be a square (a query grid); e.g. 256 = 16x16")
        self.num_queries = num_queries
        self.drop_cls_token = drop_cls_token
        # A frozen Parameter, not a buffer: Qwen-VL's state dict carries it (attn_pool.pos_embed).
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, grid), requires_grad=False)
        self.query = nn.Parameter(torch.empty(num_queries, embed_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        if always_project_kv or kv_dim != embed_dim:
            self.kv_proj = TruncNormalLinear(kv_dim, embed_dim, bias=kv_bias)
        else:
            self.kv_proj = nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        # the output LayerNorm has the same eps as ln_q / ln_kv (the reference's perceiver: 1e-12)
        self.out = (nn.Sequential(nn.LayerNorm(embed_dim, eps=layer_norm_eps), TruncNormalLinear(embed_dim, embed_dim))
                    if output_head else nn.Identity())

    def output_tokens(self, vision_tokens: int) -> int:
        return self.num_queries

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_cls_token:
            x = x[:, 1:]
        key_positions = resize_positions(self.pos_embed, x.shape[1])
        x = self.ln_kv(self.kv_proj(x))
        query = (self.ln_q(self.query) + self.pos_embed).unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.out(self.attn(query, x + key_positions, x, need_weights=False)[0])

"""The Qwen-VL visual tower (OpenCLIP ViT-bigG trunk + 256-query attention-pool resampler).

Written here, with Qwen-VL's parameter names and shapes, so that its visual weights (the
`transformer.visual.` keys of Qwen-VL-Chat, prefix stripped, `proj` dropped; see
`scripts/extract_qwen_vl.py`) load with `strict=True`. The real tower is image 448, patch 14,
width 1664, 48 layers, 16 heads, MLP 8192, output 4096 (32 resampler heads); every one of those
is an argument, so tests and the tiny default build a small tower of the same architecture.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dsvl_exp.models.vision import clip_image_processor

# Qwen-VL learns a 16x16 positional table whatever the patch grid, and interpolates it.
POSITIONAL_GRID = 16


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


class VisualAttention(nn.Module):
    """Self-attention with one fused `in_proj` Linear laid out per head as [q | k | v]."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"vision width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        head_dim = width // self.heads
        mixed = self.in_proj(x).view(batch, length, self.heads, 3 * head_dim)
        query, key, value = (t.transpose(1, 2) for t in mixed.split(head_dim, dim=-1))
        out = F.scaled_dot_product_attention(query, key, value)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class VisualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_size: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = VisualAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, mlp_size))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(mlp_size, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_size: int):
        super().__init__()
        self.resblocks = nn.ModuleList(VisualAttentionBlock(width, heads, mlp_size) for _ in range(layers))
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class Resampler(nn.Module):
    """Learned queries (a square grid, fixed sin-cos positions) cross-attend to the patch tokens."""

    def __init__(self, num_queries: int, embed_dim: int, num_heads: int, kv_dim: int):
        super().__init__()
        grid = int(math.sqrt(num_queries))
        if grid * grid != num_queries:
            raise ValueError(f"vision.num_queries={num_queries} must be a square (a query grid); e.g. 256 = 16x16")
        # A frozen Parameter, not a buffer: Qwen-VL's state dict carries it (attn_pool.pos_embed).
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, grid), requires_grad=False)
        self.query = nn.Parameter(torch.empty(num_queries, embed_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.kv_proj = TruncNormalLinear(kv_dim, embed_dim, bias=False) if kv_dim != embed_dim else nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(embed_dim, eps=1e-6)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key_positions = resize_positions(self.pos_embed, x.shape[1])
        x = self.ln_kv(self.kv_proj(x))
        query = (self.ln_q(self.query) + self.pos_embed).unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.attn(query, x + key_positions, x, need_weights=False)[0]


class QwenVisionTransformer(nn.Module):
    """Images [N, 3, S, S] -> [N, num_queries, output_dim]. No CLS token."""

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int,
                 mlp_size: int, output_dim: int, num_queries: int = 256):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"vision.image_size={image_size} is not a multiple of vision.patch_size={patch_size}")
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.positional_embedding = nn.Parameter(width**-0.5 * torch.randn(POSITIONAL_GRID**2, width))
        self.ln_pre = nn.LayerNorm(width, eps=1e-6)
        self.transformer = Transformer(width, layers, heads, mlp_size)
        self.attn_pool = Resampler(num_queries, output_dim, max(1, output_dim // 128), width)
        self.ln_post = nn.LayerNorm(output_dim, eps=1e-6)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixel_values.to(self.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # [N, grid**2, width]
        x = self.ln_pre(x + resize_positions(self.positional_embedding, x.shape[1]))
        return self.ln_post(self.attn_pool(self.transformer(x)))


class QwenVisionTower(nn.Module):
    """The tower plus what the rest of the model reads from an encoder (sizes, processor)."""

    def __init__(self, model: QwenVisionTransformer, image_processor, image_size: int, num_queries: int, output_dim: int):
        super().__init__()
        self.model = model
        self.image_processor = image_processor
        self.image_size = image_size
        self.num_tokens = num_queries
        self.hidden_size = output_dim
        self.has_cls_token = False
        self.resamples = True  # already a resampler: a second one (vit/perceiver projection) is refused
        # the trunk's Linears only: the resampler's nn.MultiheadAttention reads its weights directly
        self.lora_target_modules = r".*resblocks\.\d+\.(attn\.(in_proj|out_proj)|mlp\.(c_fc|c_proj))"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)

    def gradient_checkpointing_enable(self) -> None:
        self.model.transformer.gradient_checkpointing = True


def load_visual_state_dict(folder: str) -> dict[str, torch.Tensor]:
    """The extracted weights: `model.safetensors` or `pytorch_model.bin` in `folder`."""
    path = Path(folder).expanduser()
    if (path / "model.safetensors").exists():
        from safetensors.torch import load_file

        return load_file(str(path / "model.safetensors"))
    if (path / "pytorch_model.bin").exists():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"vision.pretrained={folder!r} holds neither model.safetensors nor pytorch_model.bin; "
        "create it from a Qwen-VL-Chat checkpoint with scripts/extract_qwen_vl.py"
    )


def load_state_dict_strictly(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """`load_state_dict(strict=True)`, also when ZeRO-3 built the model partitioned (zero.Init):
    then each module's parameters are gathered, filled on rank 0 and re-partitioned, one module
    at a time, so no rank ever holds the whole tower."""
    params = dict(model.named_parameters())
    if not any(hasattr(p, "ds_id") for p in params.values()):
        model.load_state_dict(state, strict=True)
        return
    import deepspeed
    import torch.distributed as dist

    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    wrong = [k for k, p in params.items() if k in state and tuple(p.ds_shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        raise RuntimeError(f"missing keys {missing}, unexpected keys {unexpected}, shape mismatch {wrong}")
    for prefix, module in model.named_modules():
        local = dict(module.named_parameters(recurse=False))
        if not local:
            continue
        with deepspeed.zero.GatheredParameters(list(local.values()), modifier_rank=0):
            if dist.get_rank() == 0:
                for name, param in local.items():
                    param.data.copy_(state[f"{prefix}.{name}" if prefix else name])


def build_qwen_vision_tower(
    pretrained: str | None = None,
    image_size: int = 448,
    patch_size: int = 14,
    width: int = 1664,
    layers: int = 48,
    heads: int = 16,
    mlp_size: int = 8192,
    output_dim: int = 4096,
    num_queries: int = 256,
) -> QwenVisionTower:
    """`pretrained`: a folder of extracted weights (architecture values must match them)."""
    model = QwenVisionTransformer(image_size, patch_size, width, layers, heads, mlp_size, output_dim, num_queries)
    if pretrained:
        state = load_visual_state_dict(pretrained)
        try:
            load_state_dict_strictly(model, state)
        except RuntimeError as error:
            raise ValueError(
                f"vision.pretrained={pretrained!r} does not fit the configured Qwen tower (check vision.width/"
                f"layers/heads/mlp_size/output_dim/num_queries against the checkpoint): {error}"
            ) from error
    processor = clip_image_processor(image_size)
    # Qwen-VL resizes straight to a square (no crop); resizing the shortest side then a center
    # crop is the same for square inputs and what the reference's CLIP processor does.
    return QwenVisionTower(model, processor, image_size, num_queries, output_dim)

"""The Qwen-VL visual tower (OpenCLIP ViT-bigG trunk + 256-query attention-pool resampler).

Written here, with Qwen-VL's parameter names and shapes, so that its visual weights (the
`transformer.visual.` keys of Qwen-VL-Chat, prefix stripped, `proj` dropped; see
`scripts/extract_qwen_vl.py`) load with `strict=True`. The real tower is image 448, patch 14,
width 1664, 48 layers, 16 heads, MLP 8192, output 4096 (32 resampler heads); every one of those
is an argument, so tests and the tiny default build a small tower of the same architecture.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

try:  # inside dsvl_exp: the project's user errors; the copy that travels in an export folder raises the builtin kinds
    from dsvl_exp.errors import MissingFileError
except ImportError:
    MissingFileError = FileNotFoundError

from .resampler import Resampler, resize_positions
from .vision import clip_image_processor

# Qwen-VL learns a 16x16 positional table whatever the patch grid, and interpolates it.
POSITIONAL_GRID = 16


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

    def __init__(self, model: QwenVisionTransformer, image_processor, image_size: int, num_queries: int, output_dim: int,
                 architecture: dict | None = None):
        super().__init__()
        self.model = model
        self.image_processor = image_processor
        self.image_size = image_size
        self.num_tokens = num_queries
        self.hidden_size = output_dim
        first_block = model.transformer.resblocks[0] if len(model.transformer.resblocks) else None
        self.num_heads = first_block.attn.heads if first_block is not None else 0
        self.intermediate_size = first_block.mlp.c_fc.out_features if first_block is not None else 0
        self.hidden_act = "gelu"
        self._architecture = architecture or {}
        self.has_cls_token = False
        self.resamples = True  # already a resampler: a second one (vit/perceiver projection) is refused
        # the trunk's Linears only: the resampler's nn.MultiheadAttention reads its weights directly
        self.lora_target_modules = r".*resblocks\.\d+\.(attn\.(in_proj|out_proj)|mlp\.(c_fc|c_proj))"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)

    def architecture(self) -> dict:
        return {"type": "qwen", **self._architecture}

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
    raise MissingFileError(
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
    architecture = dict(image_size=image_size, patch_size=patch_size, width=width, layers=layers, heads=heads,
                        mlp_size=mlp_size, output_dim=output_dim, num_queries=num_queries)
    return QwenVisionTower(model, processor, image_size, num_queries, output_dim, architecture)

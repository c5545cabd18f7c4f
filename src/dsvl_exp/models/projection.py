"""Projections from vision features to the decoder's embedding space."""

from __future__ import annotations

import torch
from torch import nn


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


def build_baseline_projection(vision_hidden_size: int, decoder_hidden_size: int) -> BaselineProjection:
    return BaselineProjection(vision_hidden_size, decoder_hidden_size)

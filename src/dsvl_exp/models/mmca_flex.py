"""MMCA with PyTorch's FlexAttention (`decoder.attention=mmca_flex`): the two branches of
models/mmca.py as two block-masked `flex_attention` calls over the full sequence, summed, instead
of gathered copies of the legal keys. Same function as `mmca` (tests/test_mmca.py checks both
against one reference): a query with no legal key in a branch gets nothing from it (FlexAttention
returns zeros for a fully masked row).

Where it is worth it: on a GPU, where the compiled kernel is fused and skips the fully masked
blocks, so nothing is copied (scripts/gpu_check.sh measures it). On CPU it loses to the gathered
form (BENCHMARKS.md, `scripts/bench_mmca.py`): eager FlexAttention materialises every score,
and even compiled it ran 5x the gathered form's time at 1024 tokens after a ~60 s compile, so
`mmca` stays the default. The prompt pass (query length == key length) on a CUDA device runs
here; cached decoding steps (one query over a growing cache, a new shape each step), attention
dropout (FlexAttention has none) and CPU devices (no backward there) run the gathered form.
"""

from __future__ import annotations

import torch

from .mmca import IMAGE, TEXT

_compiled: dict = {}


def flex_function(compiled: bool):
    """`flex_attention`, compiled once per process when asked (its fused kernel exists only
    compiled; eager it is a reference implementation over the full score matrix)."""
    from torch.nn.attention.flex_attention import flex_attention

    if not compiled:
        return flex_attention
    if "function" not in _compiled:
        _compiled["function"] = torch.compile(flex_attention)
    return _compiled["function"]


def branch_block_masks(token_types: torch.Tensor):
    """(image branch, text branch) block masks of the prompt pass for [batch, length] token types."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, length = token_types.shape

    def image_branch(b, h, q, kv):  # earlier images; an image query only itself
        return (token_types[b, kv] == IMAGE) & (kv <= q) & ((token_types[b, q] != IMAGE) | (kv == q))

    def text_branch(b, h, q, kv):  # earlier text, itself included
        return (token_types[b, kv] == TEXT) & (kv <= q)

    device = token_types.device
    return (create_block_mask(image_branch, batch, None, length, length, device=device),
            create_block_mask(text_branch, batch, None, length, length, device=device))


def flex_mmca(query, key, value, block_masks, scaling, compiled: bool = True) -> torch.Tensor:
    """query [batch, heads, length, dim], key/value [batch, kv_heads, length, dim] -> [batch, length, heads, dim]."""
    attend = flex_function(compiled)
    gqa = query.shape[1] != key.shape[1]
    image_mask, text_mask = block_masks
    output = attend(query, key, value, block_mask=image_mask, scale=scaling, enable_gqa=gqa)
    output = output + attend(query, key, value, block_mask=text_mask, scale=scaling, enable_gqa=gqa)
    return output.transpose(1, 2).contiguous()

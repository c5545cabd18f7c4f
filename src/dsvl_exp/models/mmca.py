"""Multi-modal causal attention (MMCA, DeepSpeed-VisualChat section 1.7) for transformers' LLaMA.

Registered in transformers' attention interface as `mmca` and `mmca_legacy`, and selected with
`attn_implementation`. The decoder's forward receives `mmca_token_types` [batch, key_length]
(0 pad / 1 text / 2 image, what `splice_images` produces, cached positions included) and hands
it down to this function. Each query attends with two separate softmaxes, summed:

- image branch: a text query sees every earlier image token; an image query sees only itself;
- text branch: any query sees the earlier text tokens (itself included when it is text).

`mmca`: a query with no legal key in a branch gets nothing from that branch. `mmca_legacy`
reproduces the reference's additive masks bit for bit: there such a row ends up a near-uniform
distribution over the keys blocked by only one of its two masks (earlier text, later images),
which the reference's released checkpoints were trained with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv

TOKEN_TYPES_KWARG = "mmca_token_types"
PAD, TEXT, IMAGE = 0, 1, 2


def branch_permissions(token_types: torch.Tensor, query_length: int, legacy: bool):
    """Boolean [batch, query, key] tensors: (causal, image keys allowed, text keys allowed)."""
    key_length = token_types.shape[1]
    offset = key_length - query_length
    query_index = torch.arange(query_length, device=token_types.device)[:, None] + offset
    key_index = torch.arange(key_length, device=token_types.device)[None, :]
    causal = (key_index <= query_index)[None]
    diagonal = (key_index == query_index)[None]
    image_query = (token_types[:, offset:] == IMAGE)[:, :, None]
    image_keys = (token_types == IMAGE)[:, None, :]
    # The reference overrides image rows only in its prompt pass (query length == key length).
    if not legacy or query_length == key_length:
        image_keys = torch.where(image_query, diagonal, image_keys)
    text_keys = (token_types == TEXT)[:, None, :]
    return causal, image_keys, text_keys


def _legacy_additive(causal: torch.Tensor, allowed_keys: torch.Tensor, dtype) -> torch.Tensor:
    # The reference adds two finfo.min masks: blocked by both overflows to -inf, blocked by one
    # stays finite. That difference is exactly where its leak comes from, so keep it.
    minimum = torch.finfo(dtype).min
    zero = torch.zeros((), dtype=dtype, device=causal.device)
    key_mask = torch.where(allowed_keys, zero, minimum)
    causal_mask = torch.where(causal, zero, minimum)
    return (key_mask + causal_mask)[:, None]


def _branch(query, key, value, causal, allowed_keys, dropout, scaling, legacy) -> torch.Tensor:
    if legacy:
        mask = _legacy_additive(causal, allowed_keys, query.dtype)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    allowed = (causal & allowed_keys)[:, None]
    mask = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
    mask = mask.masked_fill(~allowed, torch.finfo(query.dtype).min)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out * allowed.any(dim=-1, keepdim=True).to(out.dtype)


def _mmca(module, query, key, value, attention_mask, dropout=0.0, scaling=None, legacy=False, **kwargs):
    token_types = kwargs.get(TOKEN_TYPES_KWARG)
    if token_types is None:
        raise ValueError(
            f"decoder.attention={'mmca_legacy' if legacy else 'mmca'} needs the 0/1/2 token types: call the "
            f"decoder with {TOKEN_TYPES_KWARG}=[batch, key_length] (DSVLModel does)"
        )
    if token_types.shape[1] != key.shape[2]:
        raise ValueError(f"{TOKEN_TYPES_KWARG} covers {token_types.shape[1]} positions but there are {key.shape[2]} keys "
                         "(it must include the cached positions)")
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    causal, image_keys, text_keys = branch_permissions(token_types, query.shape[2], legacy)
    output = _branch(query, key, value, causal, image_keys, dropout, scaling, legacy)
    output = output + _branch(query, key, value, causal, text_keys, dropout, scaling, legacy)
    return output.transpose(1, 2).contiguous(), None


def mmca_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    return _mmca(module, query, key, value, attention_mask, dropout, scaling, legacy=False, **kwargs)


def mmca_legacy_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    return _mmca(module, query, key, value, attention_mask, dropout, scaling, legacy=True, **kwargs)


MMCA_IMPLEMENTATIONS = {"mmca": mmca_attention_forward, "mmca_legacy": mmca_legacy_attention_forward}
for _name, _function in MMCA_IMPLEMENTATIONS.items():
    AttentionInterface.register(_name, _function)

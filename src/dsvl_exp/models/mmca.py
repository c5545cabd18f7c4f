"""Multi-modal causal attention (MMCA, DeepSpeed-VisualChat section 1.7) for transformers' LLaMA.

Registered in transformers' attention interface as `mmca`, `mmca_legacy` and `mmca_flex` (the
same function as `mmca` through FlexAttention on CUDA, models/mmca_flex.py), and selected with
`attn_implementation`. The decoder's forward receives `mmca_token_types` [batch, key_length]
(0 pad / 1 text / 2 image, what `splice_images` produces, cached positions included) and hands
it down to this function. Each query attends with two separate softmaxes, summed:

- image branch: a text query sees every earlier image token; an image query sees only itself;
- text branch: any query sees the earlier text tokens (itself included when it is text).

`mmca`: a query with no legal key in a branch gets nothing from that branch. It gathers each
branch's legal keys instead of masking a full [query, key] square twice: text queries against the
text keys are plain causal attention once both are packed (the k-th text token sees text tokens
0..k), and an image query's image branch is its own value. At 2048 tokens this took 0.29x the time
of two masked squares, 1.08x one causal SDPA call (BENCHMARKS.md). The two cross-branch
rectangles (image and padding queries x text keys, text and padding queries x image keys) run, in
the prompt pass, as a few calls over key prefixes (models/mmca_prefix.py): each query's legal keys
there are a prefix of the other branch's packed keys; a decoding step masks them.

`mmca_legacy` reproduces the reference's additive masks bit for bit: there a row with no legal
key ends up a near-uniform distribution over the keys blocked by only one of its two masks
(earlier text, later images), which the reference's released checkpoints were trained with.

Indices and masks depend only on the token types, so they are built once per forward and reused
by every layer (transformers hands each layer the same `mmca_token_types` tensor); rebuilding
them per layer cost 15 ms a layer at 2048 tokens.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv

from .mmca_prefix import PrefixChunk, attend_prefix_chunks, key_prefix, prefix_chunks

log = logging.getLogger(__name__)

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


# ---- the gathered form ---------------------------------------------------------------------------
# Everything here works on "rows", [batch, length, heads, dim]: the layout the projections produce
# (transformers hands over its transpose), where picking positions is one `index_select` of whole
# rows. `gather` over [batch, heads, length, dim] took 45 % of the call at 512 tokens.


class _TakeRows(torch.autograd.Function):
    """`source.index_select(0, rows)` whose backward copies instead of accumulating: here every
    real position is taken at most once, and `grad_rows` sends the padding slots to a spare row.
    The stock backward (`index_add`, a scatter-add on CPU) was 46 % of MMCA's backward at 1024."""

    @staticmethod
    def forward(ctx, source, rows, grad_rows):
        ctx.save_for_backward(grad_rows)
        ctx.source_rows = source.shape[0]
        return source.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad):
        (grad_rows,) = ctx.saved_tensors
        buffer = grad.new_zeros((ctx.source_rows + 1, grad.shape[1]))
        return buffer.index_copy_(0, grad_rows, grad)[:-1], None, None


def take_rows(source: torch.Tensor, rows: torch.Tensor, grad_rows: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and source.requires_grad:
        return _TakeRows.apply(source, rows, grad_rows)
    return source.index_select(0, rows)


@dataclass
class PackedPositions:
    """Some positions of every row, packed to the front: `index` [batch, size] (slots past a
    row's count, `valid` False, repeat some position; nothing reads their results), `rank`
    [batch, length] each selected position's slot."""

    index: torch.Tensor
    valid: torch.Tensor
    rank: torch.Tensor
    size: int


def _pack_positions(selected: torch.Tensor) -> PackedPositions:
    counts = selected.sum(dim=1, keepdim=True)
    size = int(counts.max().item()) if selected.numel() else 0
    index = torch.argsort((~selected).to(torch.int8), dim=1, stable=True)[:, :size]
    valid = torch.arange(size, device=selected.device)[None, :] < counts
    return PackedPositions(index=index, valid=valid, rank=selected.long().cumsum(dim=1) - 1, size=size)


@dataclass
class FlatRowIndex:
    """Disjoint groups fetched in one `take_rows` (one gradient buffer instead of one per group)."""

    rows: torch.Tensor  # [batch * sum(sizes)] into the flattened [batch * row_length] rows
    grad_rows: torch.Tensor  # the same, with padding slots sent to the spare row
    sizes: list[int]


def _flat_row_index(groups: list[PackedPositions], row_length: int, offset: int = 0) -> FlatRowIndex:
    index = torch.cat([group.index for group in groups], dim=1)
    valid = torch.cat([group.valid for group in groups], dim=1)
    batch = index.shape[0]
    rows = index + offset + torch.arange(batch, device=index.device)[:, None] * row_length
    grad_rows = torch.where(valid, rows, batch * row_length)
    return FlatRowIndex(rows.reshape(-1), grad_rows.reshape(-1), [group.size for group in groups])


@dataclass
class PackedKeyMask:
    """Queries of one group against the packed keys of one branch, with an additive mask."""

    bias: torch.Tensor  # [batch, 1, queries, keys]: 0 legal, finfo.min blocked
    has_key: torch.Tensor  # [batch, queries] bool: False where a query has no legal key (gets nothing)


@dataclass
class GatheredPlan:
    batch: int
    query_length: int
    keys: FlatRowIndex  # text keys, then image keys
    queries: FlatRowIndex  # text queries, then the others (image, padding), both against the text keys
    non_image_queries: FlatRowIndex  # text and padding queries, against the image keys
    own_values: FlatRowIndex | None  # cached decoding: image queries' own values (prompt: the image keys)
    text_causal: bool  # prompt pass: packed text queries x packed text keys is plain causal
    text_masked: PackedKeyMask | None
    other_masked: PackedKeyMask
    image_masked: PackedKeyMask
    text_inverse: torch.Tensor  # [batch * query]: row in cat(text queries, other queries, a zero row)
    image_inverse: torch.Tensor  # [batch * query]: row in cat(non-image queries, image queries, a zero row)


def _packed_key_mask(queries: PackedPositions, keys: PackedPositions, offset: int, dtype) -> PackedKeyMask:
    allowed = (keys.index[:, None, :] <= queries.index[:, :, None] + offset) & keys.valid[:, None, :]
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    bias = torch.where(allowed, zero, torch.finfo(dtype).min)
    return PackedKeyMask(bias[:, None], allowed.any(dim=-1))


def _inverse(selected: torch.Tensor, first: PackedPositions, second: PackedPositions,
             first_has_key: torch.Tensor | None, second_has_key: torch.Tensor | None) -> torch.Tensor:
    """Each position's row in cat(first's slots, second's slots, one zero row), per batch row. A
    position whose query has no legal key reads the zero row: that replaces multiplying each
    masked output by its has-key flags (5 % of the forward at 2048 tokens, 788 of them image)."""
    batch = selected.shape[0]
    width = first.size + second.size + 1
    slot = torch.where(selected, first.rank, first.size + second.rank)
    has_key = torch.ones_like(selected)
    for members, group, group_has_key in ((selected, first, first_has_key), (~selected, second, second_has_key)):
        if group_has_key is not None and group.size > 0:
            has_key &= ~members | group_has_key.gather(1, group.rank.clamp(min=0))
    slot = torch.where(has_key, slot, width - 1)
    return (slot + torch.arange(batch, device=slot.device)[:, None] * width).reshape(-1)


@dataclass
class PromptPlan:
    """The prompt pass with the cross-branch rectangles as key-prefix chunks (models/mmca_prefix.py).
    The queries are packed once as [text | padding | image]: the text branch's outputs (text causal,
    then padding and image queries x text-key prefixes) and the image branch's (text and padding
    queries x image-key prefixes, then the image queries' own values) fill the same slots, so the
    two are added there and moved back to their positions by one `take_rows`."""

    batch: int
    query_length: int
    keys: FlatRowIndex  # text keys, then image keys: the same positions as the text and image queries
    queries: FlatRowIndex  # text, padding, image
    text_prefixes: list[PrefixChunk]  # padding and image queries (slots from the text count on) x text keys
    image_prefixes: list[PrefixChunk]  # text and padding queries (slots from 0) x image keys
    inverse: torch.Tensor  # [batch * length]: each position's slot among the packed queries


def prompt_plan(token_types: torch.Tensor, dtype) -> PromptPlan:
    batch, length = token_types.shape
    is_text, is_image, is_pad = token_types == TEXT, token_types == IMAGE, token_types == PAD
    text, pad, image = _pack_positions(is_text), _pack_positions(is_pad), _pack_positions(is_image)

    def prefixes(first: PackedPositions, second: PackedPositions, keys: torch.Tensor, offset: int):
        index, valid = torch.cat([first.index, second.index], dim=1), torch.cat([first.valid, second.valid], dim=1)
        return prefix_chunks(key_prefix(keys, index, valid), valid, dtype, offset)

    slot = torch.where(is_text, text.rank, torch.where(is_pad, text.size + pad.rank, text.size + pad.size + image.rank))
    width = text.size + pad.size + image.size
    return PromptPlan(
        batch=batch,
        query_length=length,
        keys=_flat_row_index([text, image], length),
        queries=_flat_row_index([text, pad, image], length),
        text_prefixes=prefixes(pad, image, is_text, text.size),
        image_prefixes=prefixes(text, pad, is_image, 0),
        inverse=(slot + torch.arange(batch, device=slot.device)[:, None] * width).reshape(-1),
    )


def gathered_plan(token_types: torch.Tensor, query_length: int, dtype, key_prefixes: bool = True) -> GatheredPlan | PromptPlan:
    """`key_prefixes=False`: the prompt pass's cross-branch rectangles masked in full (the form
    before models/mmca_prefix.py, kept for the side-by-side benchmark and the tests)."""
    if key_prefixes and query_length == token_types.shape[1]:
        return prompt_plan(token_types, dtype)
    batch, key_length = token_types.shape
    offset = key_length - query_length
    query_types = token_types[:, offset:]
    is_text, is_image = query_types == TEXT, query_types == IMAGE
    text_keys, image_keys = _pack_positions(token_types == TEXT), _pack_positions(token_types == IMAGE)
    text_queries, other_queries = _pack_positions(is_text), _pack_positions(~is_text)
    non_image_queries, image_queries = _pack_positions(~is_image), _pack_positions(is_image)
    text_causal = offset == 0
    text_masked = None if text_causal else _packed_key_mask(text_queries, text_keys, offset, dtype)
    other_masked = _packed_key_mask(other_queries, text_keys, offset, dtype)
    image_masked = _packed_key_mask(non_image_queries, image_keys, offset, dtype)
    other_has_key, image_has_key = other_masked.has_key, image_masked.has_key
    return GatheredPlan(
        batch=batch,
        query_length=query_length,
        keys=_flat_row_index([text_keys, image_keys], key_length),
        queries=_flat_row_index([text_queries, other_queries], query_length),
        non_image_queries=_flat_row_index([non_image_queries], query_length),
        own_values=None if text_causal else _flat_row_index([image_queries], key_length, offset),
        text_causal=text_causal,
        text_masked=text_masked,
        other_masked=other_masked,
        image_masked=image_masked,
        text_inverse=_inverse(is_text, text_queries, other_queries,
                              None if text_masked is None else text_masked.has_key, other_has_key),
        image_inverse=_inverse(~is_image, non_image_queries, image_queries, image_has_key, None),
    )


def _gather_packed(rows: torch.Tensor, index: FlatRowIndex, groups: int = 1) -> list[torch.Tensor]:
    """rows [batch, length, heads, dim] -> per group [batch, size, heads * groups, dim] (GQA repeat)."""
    batch, length, heads, dim = rows.shape
    total = sum(index.sizes)
    picked = take_rows(rows.reshape(batch * length, heads * dim), index.rows, index.grad_rows).view(batch, total, heads, dim)
    if groups > 1:  # the order of transformers' repeat_kv: query head h uses key head h // groups
        picked = picked[:, :, :, None].expand(-1, -1, -1, groups, -1).reshape(batch, total, heads * groups, dim)
    return list(picked.split(index.sizes, dim=1))


def _sdpa(query_rows, key_rows, value_rows, **kwargs) -> torch.Tensor:
    out = F.scaled_dot_product_attention(
        query_rows.transpose(1, 2), key_rows.transpose(1, 2), value_rows.transpose(1, 2), **kwargs
    )
    return out.transpose(1, 2)


def _attend(query, key, value, part: PackedKeyMask, dropout: float, scaling) -> torch.Tensor:
    if query.shape[1] == 0 or key.shape[1] == 0:
        return query.new_zeros(query.shape)
    # rows without a legal key come out as an average of blocked values: the plan's inverse never reads them
    return _sdpa(query, key, value, attn_mask=part.bias, dropout_p=dropout, scale=scaling)


def _own_value_dropped(own_value: torch.Tensor, dropout: float) -> torch.Tensor:
    if dropout > 0.0:  # the one attention weight (1.0) of a single-key softmax, dropped out
        return own_value * F.dropout(own_value.new_ones(own_value.shape[:3] + (1,)), dropout)
    return own_value


def _gathered_prompt(query, key, value, plan: PromptPlan, groups: int, dropout: float, scaling) -> torch.Tensor:
    text_key, image_key = _gather_packed(key, plan.keys, groups)
    text_value, image_value = _gather_packed(value, plan.keys, groups)
    (packed_query,) = _gather_packed(query, FlatRowIndex(plan.queries.rows, plan.queries.grad_rows, [sum(plan.queries.sizes)]))
    text_size = plan.queries.sizes[0]
    # two partitions of the packed queries, each one split (one `cat` in the backward)
    text_branch = packed_query.split([text_size] + [c.stop - c.start for c in plan.text_prefixes], dim=1)
    image_branch = packed_query.split([c.stop - c.start for c in plan.image_prefixes] + [plan.queries.sizes[2]], dim=1)
    text_out = _sdpa(text_branch[0], text_key, text_value, dropout_p=dropout, is_causal=True, scale=scaling)
    others = attend_prefix_chunks(text_branch[1:], text_key, text_value, plan.text_prefixes, dropout, scaling)
    non_image = attend_prefix_chunks(image_branch[:-1], image_key, image_value, plan.image_prefixes, dropout, scaling)
    # prompt pass: the image queries are the image keys, in order
    both = torch.cat([text_out, *others], dim=1) + torch.cat([*non_image, _own_value_dropped(image_value, dropout)], dim=1)
    batch, slots, heads, dim = both.shape
    # every slot is read at most once; the packed groups' unread padding slots get a zero gradient
    return take_rows(both.reshape(-1, heads * dim), plan.inverse, plan.inverse).view(batch, plan.query_length, heads, dim)


def _gathered(query, key, value, plan: GatheredPlan | PromptPlan, groups: int, dropout: float, scaling) -> torch.Tensor:
    """query [batch, query_length, heads, dim], key/value [batch, key_length, kv_heads, dim] -> like query."""
    if isinstance(plan, PromptPlan):
        return _gathered_prompt(query, key, value, plan, groups, dropout, scaling)
    text_key, image_key = _gather_packed(key, plan.keys, groups)
    text_value, image_value = _gather_packed(value, plan.keys, groups)
    text_query, other_query = _gather_packed(query, plan.queries)
    (non_image_query,) = _gather_packed(query, plan.non_image_queries)
    if plan.text_causal:
        text_out = _sdpa(text_query, text_key, text_value, dropout_p=dropout, is_causal=True, scale=scaling)
        own_value = image_value  # prompt pass: the image queries are the image keys, in order
    else:
        text_out = _attend(text_query, text_key, text_value, plan.text_masked, dropout, scaling)
        (own_value,) = _gather_packed(value, plan.own_values, groups)
    other_out = _attend(other_query, text_key, text_value, plan.other_masked, dropout, scaling)
    non_image_out = _attend(non_image_query, image_key, image_value, plan.image_masked, dropout, scaling)
    own_value = _own_value_dropped(own_value, dropout)
    batch, heads, dim = plan.batch, query.shape[2], query.shape[3]

    def scatter(first: torch.Tensor, second: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        zero_row = first.new_zeros((batch, 1, heads, dim))  # read by the positions with no legal key
        both = torch.cat([first, second, zero_row], dim=1).reshape(-1, heads * dim)
        # every slot is read at most once (the zero rows excepted); unread slots get a zero gradient
        return take_rows(both, inverse, inverse).view(batch, plan.query_length, heads, dim)

    return scatter(text_out, other_out, plan.text_inverse) + scatter(non_image_out, own_value, plan.image_inverse)


# ---- one plan per forward --------------------------------------------------------------------------

_cache: dict = {}


def _cached(token_types: torch.Tensor, query_length: int, dtype, kind, build):
    """The plan for these token types, built at the first layer and reused by the rest: the cache
    holds one entry, keyed on the tensor's identity and version (not its values: comparing them
    would cost what it saves). `kind`: False the gathered plan, True the legacy masks, "flex"
    FlexAttention's block masks."""
    key = (kind, query_length, dtype, token_types._version)
    entry = _cache.get("entry")
    if entry is not None and entry[0] == key and entry[1]() is token_types:
        return entry[2]
    plan = build()
    _cache["entry"] = (key, weakref.ref(token_types), plan)
    return plan


def _legacy_masks(token_types: torch.Tensor, query_length: int, dtype):
    causal, image_keys, text_keys = branch_permissions(token_types, query_length, legacy=True)
    return _legacy_additive(causal, image_keys, dtype), _legacy_additive(causal, text_keys, dtype)


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
    query_length = query.shape[2]
    if not legacy:
        plan = _cached(token_types, query_length, query.dtype, False,
                       lambda: gathered_plan(token_types, query_length, query.dtype))
        rows = (query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        return _gathered(*rows, plan, groups, dropout, scaling), None
    image_mask, text_mask = _cached(token_types, query_length, query.dtype, True,
                                    lambda: _legacy_masks(token_types, query_length, query.dtype))
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=image_mask, dropout_p=dropout, scale=scaling)
    output = output + F.scaled_dot_product_attention(query, key, value, attn_mask=text_mask, dropout_p=dropout, scale=scaling)
    return output.transpose(1, 2).contiguous(), None


def mmca_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    return _mmca(module, query, key, value, attention_mask, dropout, scaling, legacy=False, **kwargs)


_flex_notes: list = []  # the CPU note, logged once per process


def mmca_flex_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """`mmca` through FlexAttention (models/mmca_flex.py): the prompt pass on a CUDA device. Decoding
    steps, attention dropout and CPU devices run the gathered form (on CPU, torch 2.13's FlexAttention
    has no backward, and its compiled forward lost to the gathered form: BENCHMARKS.md)."""
    token_types = kwargs.get(TOKEN_TYPES_KWARG)
    if query.device.type != "cuda" and not _flex_notes:
        _flex_notes.append(log.warning("decoder.attention=mmca_flex runs FlexAttention on CUDA devices only; on "
                                       "this CPU the gathered form runs (the same function as decoder.attention=mmca)"))
    if (query.device.type != "cuda" or dropout > 0.0 or token_types is None or query.shape[2] != key.shape[2]
            or token_types.shape[1] != key.shape[2]):
        return _mmca(module, query, key, value, attention_mask, dropout, scaling, legacy=False, **kwargs)
    from .mmca_flex import branch_block_masks, flex_mmca

    masks = _cached(token_types, query.shape[2], query.dtype, "flex", lambda: branch_block_masks(token_types))
    return flex_mmca(query, key, value, masks, scaling), None


def mmca_legacy_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    return _mmca(module, query, key, value, attention_mask, dropout, scaling, legacy=True, **kwargs)


MMCA_IMPLEMENTATIONS = {"mmca": mmca_attention_forward, "mmca_legacy": mmca_legacy_attention_forward,
                        "mmca_flex": mmca_flex_attention_forward}


def register_attention() -> None:
    """Make these functions transformers' `mmca` / `mmca_legacy` / `mmca_flex`. The registry is global: loading an
    export folder's copy of this file (trust_remote_code) registers that copy's functions, with their
    own mask cache, in their place."""
    for name, function in MMCA_IMPLEMENTATIONS.items():
        AttentionInterface.register(name, function)


register_attention()

"""MMCA's cross-branch rectangles as a few unmasked attention calls over key prefixes.

In the prompt pass the legal keys of a query in the other branch are a *prefix* of that branch's
packed keys: an image query in image span j sees the text keys before span j, a text (or padding)
query sees the image keys before it. Along the packed queries that prefix never shrinks, so the
rectangle [queries x packed keys] is a staircase (two staircases side by side when padding
queries and image queries share one packed group). Masking the full rectangle computed about twice
the legal scores on a text-heavy batch (788 image tokens of 2048: two 788 x 1260 rectangles, half
blocked, beside a 1260-token causal call). Here the packed queries are cut into chunks that each
attend to the keys up to their largest prefix: where every query of a chunk (in every batch row)
sees the same prefix the call is unmasked, elsewhere it carries the chunk's slice of the mask.
The result is the same softmax over the same legal keys.

Chunk boundaries: every slot where some batch row's prefix grows (one image span, one text
segment), then adjacent pieces merged when the scores a merge wastes cost less than one more
call (`CALL_OVERHEAD_PAIRS`, `KEY_PASS_ROWS`; a short dynamic programme over at most
`MERGE_WINDOW` pieces).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# One more SDPA call (its dispatch, the output slice the `cat` copies) costs about as much as this
# many query-key pairs (a guess, not a measurement: at 32 heads of 128 a pair is 16 kFLOP forward,
# so 4096 pairs are 67 MFLOP, well under a millisecond).
CALL_OVERHEAD_PAIRS = 4096
# Each call also passes over its keys a few times whatever its query count (the backward's zeroed
# key and value gradients, adding them into the shared gradient): about as much as this many
# query rows. Without it, 52-query text segments each took a 1576-key prefix of their own.
KEY_PASS_ROWS = 16
MERGE_WINDOW = 16


@dataclass
class PrefixChunk:
    """Packed queries [start, stop) against the first `keys` packed keys of the other branch.
    `bias` [batch, 1, stop - start, keys] (0 legal, finfo.min blocked) only where some query of the
    chunk sees fewer keys; `keys == 0`: no query of the chunk has a legal key (its output is zeros).
    `keep` [batch, stop - start, 1, 1] where a query of a masked chunk has no legal key at all:
    multiplies its output (the mean of blocked values) by 0."""

    start: int
    stop: int
    keys: int
    bias: torch.Tensor | None
    keep: torch.Tensor | None = None


def key_prefix(selected_keys: torch.Tensor, query_index: torch.Tensor, query_valid: torch.Tensor) -> torch.Tensor:
    """[batch, queries]: how many of the selected key positions lie at or before each packed query
    (the prompt pass: query and key positions coincide); 0 in the slots past a row's count."""
    through = selected_keys.long().cumsum(dim=1).gather(1, query_index)
    return torch.where(query_valid, through, 0)


def _pieces(prefix: torch.Tensor, valid: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
    """Maximal runs of slots over which no row's prefix changes: (bounds, largest prefix, smallest
    valid prefix) per run."""
    size = prefix.shape[1]
    grows = (prefix[:, 1:] != prefix[:, :-1]).any(dim=0).nonzero().flatten() + 1
    bounds = [0, *grows.tolist(), size]
    largest = prefix.max(dim=0).values
    smallest = torch.where(valid, prefix, torch.iinfo(prefix.dtype).max).min(dim=0).values
    largest, smallest = largest.tolist(), smallest.tolist()
    runs = list(zip(bounds[:-1], bounds[1:]))
    return bounds, [largest[start] for start, _ in runs], [min(smallest[start:stop]) for start, stop in runs]


def _merge(bounds: list[int], largest: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs grouped into chunks, minimising computed pairs + the cost of each call;
    a chunk of runs a..b-1 attends to max(largest[a:b]) keys."""
    count = len(largest)
    best, choice = [0] * (count + 1), [0] * (count + 1)
    for stop in range(1, count + 1):
        options = []
        keys = 0
        for start in range(stop - 1, max(0, stop - MERGE_WINDOW) - 1, -1):
            keys = max(keys, largest[start])
            cost = (bounds[stop] - bounds[start] + KEY_PASS_ROWS) * keys + (CALL_OVERHEAD_PAIRS if keys else 0)
            options.append((best[start] + cost, start))
        best[stop], choice[stop] = min(options)
    groups, stop = [], count
    while stop > 0:
        groups.append((choice[stop], stop))
        stop = choice[stop]
    return groups[::-1]


def prefix_chunks(prefix: torch.Tensor, valid: torch.Tensor, dtype, offset: int = 0) -> list[PrefixChunk]:
    """The chunks of one rectangle, from `key_prefix`'s [batch, queries]; `offset` is added to their
    start and stop (the group's place among the packed queries)."""
    if prefix.shape[1] == 0:
        return []
    bounds, largest, smallest = _pieces(prefix, valid)
    chunks = []
    for first, last in _merge(bounds, largest):
        start, stop, keys = bounds[first], bounds[last], max(largest[first:last])
        bias = keep = None
        if keys and min(smallest[first:last]) < keys:
            allowed = torch.arange(keys, device=prefix.device)[None, None, :] < prefix[:, start:stop, None]
            bias = torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[:, None]
            if min(smallest[first:last]) == 0:
                keep = (prefix[:, start:stop] > 0).to(dtype)[:, :, None, None]
        chunks.append(PrefixChunk(start + offset, stop + offset, keys, bias, keep))
    return chunks


class _KeyPrefixes(torch.autograd.Function):
    """`[source[:, :length] for length in lengths]` whose backward adds each prefix's gradient into
    one buffer. Autograd's slice backward builds a zeroed full-size gradient per slice and adds them:
    for 8 chunks over 1576 image keys (32 heads of 128) that made the backward slower than the full
    masked rectangles it replaces."""

    @staticmethod
    def forward(ctx, source, lengths):
        ctx.shape, ctx.lengths = source.shape, lengths
        return tuple(source[:, :length] for length in lengths)

    @staticmethod
    def backward(ctx, *grads):
        buffer = next(grad for grad in grads if grad is not None).new_zeros(ctx.shape)
        for length, grad in zip(ctx.lengths, grads):
            if grad is not None:
                buffer[:, :length] += grad
        return buffer, None


def key_prefixes(source: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, ...]:
    if lengths and torch.is_grad_enabled() and source.requires_grad:
        return _KeyPrefixes.apply(source, lengths)
    return tuple(source[:, :length] for length in lengths)


def attend_prefix_chunks(pieces, key, value, chunks: list[PrefixChunk], dropout: float, scaling) -> list[torch.Tensor]:
    """pieces: each chunk's queries [batch, stop - start, heads, dim]; key/value [batch, keys, heads,
    dim] -> one output per chunk (rows whose query has no legal key hold zeros; padding slots of the
    packed queries, garbage)."""
    attending = [chunk for chunk in chunks if chunk.keys]
    lengths = [chunk.keys for chunk in attending]
    keys = iter(zip(key_prefixes(key, lengths), key_prefixes(value, lengths)))
    outputs = []
    for chunk, rows in zip(chunks, pieces):
        if chunk.keys == 0:
            outputs.append(rows.new_zeros(rows.shape))
            continue
        chunk_key, chunk_value = next(keys)
        out = F.scaled_dot_product_attention(rows.transpose(1, 2), chunk_key.transpose(1, 2), chunk_value.transpose(1, 2),
                                             attn_mask=chunk.bias, dropout_p=dropout, scale=scaling)
        out = out.transpose(1, 2)
        outputs.append(out if chunk.keep is None else out * chunk.keep)
    return outputs

"""`data.max_seq_len`: the length a sample takes in the decoder, and truncation at round
boundaries.

A sample's length counts its tokens with every `<image>` placeholder expanded to the model's
`tokens_per_image` visual tokens. A sample that is too long keeps its leading rounds that fit
(a round carries its images, so no image is ever cut); one whose first round alone does not fit
is dropped. Rendering of a round depends only on earlier rounds, so the kept prefix is exact.

Round lengths are computed once: split across the ranks and gathered (`sharding.map_sharded`),
then cached under `cache_dir` keyed by the data (`BuiltData.key`), the tokenizer, the template
and `tokens_per_image`; the next run with the same data loads them instead of tokenizing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dsvl_exp.data.conversation import Conversation
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.fingerprint import template_sha256, tokenizer_sha256
from dsvl_exp.data.sharding import all_ranks_true, map_sharded, rank_and_world
from dsvl_exp.data.template import ChatTemplate, tokenize_round

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FittedConversations:
    conversations: list[Conversation]
    lengths: list[int]  # decoder length of each kept conversation (visual tokens included)
    truncated: int
    dropped: int
    kept: list[int] = field(default_factory=list)  # index of each kept conversation in the input


def round_lengths(conversation: Conversation, tokenizer, template: ChatTemplate, tokens_per_image: int) -> list[int]:
    lengths = []
    for (prompt, answer), round_ in zip(template.render_conversation(conversation), conversation.rounds):
        ids, _ = tokenize_round(tokenizer, prompt, answer)
        lengths.append(len(ids) + round_.num_images * (tokens_per_image - 1))
    return lengths


def batched_round_lengths(conversations: Sequence[Conversation], tokenizer, template: ChatTemplate,
                          tokens_per_image: int, batch: int = 4096) -> list[list[int]]:
    """`round_lengths` of many conversations, tokenizing their texts in batches (a fast
    tokenizer batch call is ~10x quicker than one call per text)."""
    result = []
    bos = int(tokenizer.bos_token_id is not None)
    for start in range(0, len(conversations), batch):
        chunk = conversations[start : start + batch]
        rendered = [template.render_conversation(c) for c in chunk]
        texts = [text for rounds in rendered for prompt, answer in rounds for text in (prompt, answer)]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        k = 0
        for conversation, rounds in zip(chunk, rendered):
            lengths = []
            for round_ in conversation.rounds:
                lengths.append(bos + len(ids[k]) + len(ids[k + 1]) + 1 + round_.num_images * (tokens_per_image - 1))
                k += 2
            result.append(lengths)
    return result


def lengths_cache_path(cache_dir: str | Path, data_key: str, split: str, tokenizer, template: ChatTemplate,
                       tokens_per_image: int) -> Path:
    key = hashlib.sha256(f"{data_key}/{split}/{tokenizer_sha256(tokenizer)}/{template_sha256(template)}/{tokens_per_image}".encode())
    return Path(cache_dir).expanduser() / f"lengths-{split}-{key.hexdigest()[:32]}.npz"


def load_lengths(path: Path, conversations: Sequence[Conversation]) -> list[list[int]] | None:
    try:
        with np.load(path) as cached:
            flat, counts = cached["lengths"], cached["rounds"]
    except (OSError, ValueError, KeyError):
        return None
    if len(counts) != len(conversations) or any(int(n) != len(c.rounds) for n, c in zip(counts, conversations)):
        log.warning("length cache %s does not match the data; recomputing", path)
        return None
    offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
    flat = flat.tolist()
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(counts))]


def save_lengths(path: Path, lengths: list[list[int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    with os.fdopen(handle, "wb") as f:
        np.savez(f, lengths=np.fromiter((n for rounds in lengths for n in rounds), dtype=np.int32),
                 rounds=np.fromiter(map(len, lengths), dtype=np.int32))
    os.replace(temporary, path)  # atomic: ranks and concurrent runs see a whole file or none


def all_round_lengths(conversations: Sequence[Conversation], tokenizer, template: ChatTemplate, tokens_per_image: int,
                      cache_path: Path | None = None) -> list[list[int]]:
    """Per-round decoder lengths of every conversation: from the cache when it matches, else
    computed with the work split across ranks (then cached)."""
    cached = load_lengths(cache_path, conversations) if cache_path is not None and cache_path.is_file() else None
    if all_ranks_true(cached is not None):  # decided together: a rank alone computing would wait forever
        log.info("round lengths of %d conversation(s) loaded from %s", len(conversations), cache_path)
        return cached
    lengths = map_sharded(conversations, lambda part: batched_round_lengths(part, tokenizer, template, tokens_per_image))
    if cache_path is not None and rank_and_world()[0] == 0:
        save_lengths(cache_path, lengths)
    return lengths


def truncate_rounds(conversation: Conversation, keep: int) -> Conversation:
    rounds = conversation.rounds[:keep]
    images = conversation.images[: sum(r.num_images for r in rounds)]
    return replace(conversation, rounds=rounds, images=images, meta={**conversation.meta, "truncated_from_rounds": len(conversation.rounds)})


def rounds_that_fit(per_round: Sequence[int], max_seq_len: int | None) -> tuple[int, int]:
    """(number of leading rounds within max_seq_len, their total length)."""
    total, keep = 0, 0
    for length in per_round:
        if max_seq_len is not None and total + length > max_seq_len:
            break
        total += length
        keep += 1
    return keep, total


def fit_to_max_seq_len(
    conversations: Sequence[Conversation], tokenizer, template: ChatTemplate, tokens_per_image: int,
    max_seq_len: int | None, split: str, cache_path: Path | None = None,
) -> FittedConversations:
    per_conversation = all_round_lengths(conversations, tokenizer, template, tokens_per_image, cache_path)
    kept, lengths, indices, truncated, dropped = [], [], [], 0, 0
    for index, (conversation, per_round) in enumerate(zip(conversations, per_conversation)):
        keep, total = rounds_that_fit(per_round, max_seq_len)
        if keep == 0:
            dropped += 1
            continue
        if keep < len(per_round):
            truncated += 1
            conversation = truncate_rounds(conversation, keep)
        kept.append(conversation)
        lengths.append(total)
        indices.append(index)
    if truncated or dropped:
        log.warning("%s data: %d sample(s) truncated at a round boundary and %d dropped (first round alone longer "
                    "than data.max_seq_len=%s, counting %d tokens per image)", split, truncated, dropped, max_seq_len, tokens_per_image)
    if conversations and not kept:
        raise DataError(f"{split} data: every sample is longer than data.max_seq_len={max_seq_len} even in its first round; raise the limit")
    return FittedConversations(kept, lengths, truncated, dropped, indices)

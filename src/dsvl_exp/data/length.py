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
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dsvl_exp.data.conversation import Conversation
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.fingerprint import template_sha256, tokenizer_sha256
from dsvl_exp.data.snapshot import gc_paused
from dsvl_exp.data.sharding import all_ranks_true, map_sharded, rank_and_world
from dsvl_exp.data.template import ChatTemplate, tokenize_round
from dsvl_exp.files import write_atomically

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


# A text longer than (cap + margin) * 32 characters is first tokenized only that far: with more than
# cap + margin tokens there, the whole is known to be too long (the margin covers a word cut at the
# end of the prefix), so a 50 MB line costs what 130k characters cost (tokenizing all of it took
# 11 GB and minutes). Below 32 characters per token on average (any real text), the prefix decides.
PREFIX_CHARS_PER_TOKEN = 32
PREFIX_MARGIN = 64


def exact_token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Token counts of `texts` (no special tokens). A fast tokenizer's Rust backend is called
    directly: transformers' wrapper around it spends more time building Python lists of ids and
    offsets than the tokenization itself (measured 9.6 s of 27 s for 80k texts)."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch"):
        return [len(encoding.ids) for encoding in backend.encode_batch(texts, add_special_tokens=False)]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def token_counts(tokenizer, texts: list[str], cap: int | None = None) -> list[int]:
    """Exact counts, except that a count known to exceed `cap` may be any number above it."""
    if cap is None:
        return exact_token_counts(tokenizer, texts)
    bound = (cap + PREFIX_MARGIN) * PREFIX_CHARS_PER_TOKEN
    long = [i for i, text in enumerate(texts) if len(text) > bound]
    if not long:
        return exact_token_counts(tokenizer, texts)
    counts = exact_token_counts(tokenizer, [text[:bound] for text in texts])
    undecided = [i for i in long if counts[i] <= cap + PREFIX_MARGIN]
    for i, count in zip(undecided, exact_token_counts(tokenizer, [texts[i] for i in undecided])):
        counts[i] = count
    return counts


def known_longer_than(tokenizer, texts: list[str], cap: int) -> bool:
    """True when `texts` together surely have more than `cap` tokens, decided on prefixes of the
    texts long enough to matter; False when they fit or are short enough to tokenize outright."""
    if sum(map(len, texts)) <= (cap + PREFIX_MARGIN) * PREFIX_CHARS_PER_TOKEN:
        return False
    return sum(token_counts(tokenizer, texts, cap)) > cap


def batched_round_lengths(conversations: Sequence[Conversation], tokenizer, template: ChatTemplate,
                          tokens_per_image: int, batch: int = 8192, cap: int | None = None) -> list[int]:
    """`round_lengths` of many conversations, flattened, tokenizing in batches; each distinct text
    is tokenized once (prompt pools and templated questions repeat across a large set). A round
    longer than `cap` gets some length above `cap` (see token_counts)."""
    flat = []
    bos, eos = int(tokenizer.bos_token_id is not None), 1
    for start in range(0, len(conversations), batch):
        chunk = conversations[start : start + batch]
        texts = [text for c in chunk for prompt, answer in template.render_conversation(c) for text in (prompt, answer)]
        distinct = list(dict.fromkeys(texts))
        count_of = dict(zip(distinct, token_counts(tokenizer, distinct, cap)))
        k = 0
        for conversation in chunk:
            for round_ in conversation.rounds:
                flat.append(bos + count_of[texts[k]] + count_of[texts[k + 1]] + eos + round_.num_images * (tokens_per_image - 1))
                k += 2
    return flat


@dataclass(frozen=True)
class RoundLengths:
    """Every round's decoder length, flattened: conversation i owns `rounds[i]` entries."""

    flat: np.ndarray
    rounds: np.ndarray

    def of(self, index: int) -> list[int]:
        start = int(self.offsets[index])
        return self.flat[start : start + int(self.rounds[index])].tolist()

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.rounds)[:-1]]).astype(np.int64)


def rounds_per_conversation(conversations: Sequence[Conversation]) -> np.ndarray:
    return np.fromiter((len(c.rounds) for c in conversations), dtype=np.int32, count=len(conversations))


def lengths_cache_path(cache_dir: str | Path, data_key: str, split: str, tokenizer, template: ChatTemplate,
                       tokens_per_image: int, max_seq_len: int | None = None) -> Path:
    """`max_seq_len`: the lengths of rounds longer than it are only known to be longer (token_counts)."""
    key = f"{data_key}/{split}/{tokenizer_sha256(tokenizer)}/{template_sha256(template)}/{tokens_per_image}"
    key = hashlib.sha256((key + (f"/{max_seq_len}" if max_seq_len is not None else "")).encode())
    return Path(cache_dir).expanduser() / f"lengths-{split}-{key.hexdigest()[:32]}.npz"


def load_lengths(path: Path, rounds: np.ndarray) -> RoundLengths | None:
    try:
        with np.load(path) as cached:
            flat, cached_rounds = cached["lengths"], cached["rounds"]
    except (OSError, ValueError, KeyError):
        return None
    if not np.array_equal(cached_rounds, rounds):
        log.warning("length cache %s does not match the data; recomputing", path)
        return None
    return RoundLengths(flat, rounds)


def save_lengths(path: Path, lengths: RoundLengths) -> None:
    arrays = io.BytesIO()
    np.savez(arrays, lengths=lengths.flat, rounds=lengths.rounds)
    write_atomically(path, arrays.getvalue())  # ranks and concurrent runs see a whole file or none


def all_round_lengths(conversations: Sequence[Conversation], tokenizer, template: ChatTemplate, tokens_per_image: int,
                      cache_path: Path | None = None, cap: int | None = None) -> RoundLengths:
    """Per-round decoder lengths of every conversation: from the cache when it matches, else
    computed with the work split across ranks (then cached)."""
    rounds = rounds_per_conversation(conversations)
    cached = load_lengths(cache_path, rounds) if cache_path is not None and cache_path.is_file() else None
    if all_ranks_true(cached is not None):  # decided together: a rank alone computing would wait forever
        log.info("round lengths of %d conversation(s) loaded from %s", len(conversations), cache_path)
        return cached
    # Shards of whole conversations, in blocks so each rank tokenizes big batches.
    blocks = [conversations[start : start + 8192] for start in range(0, len(conversations), 8192)]
    per_block = map_sharded(blocks, lambda mine: [batched_round_lengths(block, tokenizer, template, tokens_per_image, cap=cap)
                                                          for block in mine])
    lengths = RoundLengths(np.fromiter((n for block in per_block for n in block), dtype=np.int32, count=int(rounds.sum())), rounds)
    if cache_path is not None and rank_and_world()[0] == 0:
        save_lengths(cache_path, lengths)
    return lengths


def truncate_rounds(conversation: Conversation, keep: int) -> Conversation:
    rounds = conversation.rounds[:keep]
    images = conversation.images[: sum(r.num_images for r in rounds)]
    return replace(conversation, rounds=rounds, images=images, meta={**conversation.meta, "truncated_from_rounds": len(conversation.rounds)})


def fit_to_max_seq_len(
    conversations: Sequence[Conversation], tokenizer, template: ChatTemplate, tokens_per_image: int,
    max_seq_len: int | None, split: str, cache_path: Path | None = None,
) -> FittedConversations:
    with gc_paused():
        lengths = all_round_lengths(conversations, tokenizer, template, tokens_per_image, cache_path, cap=max_seq_len)
    # Vectorised over all rounds (a Python loop over 1M conversations costs seconds): a round fits
    # when the running total of its conversation up to it is within max_seq_len.
    offsets, rounds = lengths.offsets, lengths.rounds.astype(np.int64)
    running = np.cumsum(lengths.flat, dtype=np.int64)
    before = np.repeat(np.concatenate([[0], running])[offsets], rounds)  # total of all earlier conversations' rounds
    within = running - before
    fits = within <= (max_seq_len if max_seq_len is not None else np.iinfo(np.int64).max)
    conversation_of = np.repeat(np.arange(len(rounds)), rounds)
    # rounds are positive, so a conversation's fitting rounds are a prefix: count them
    keep = np.bincount(conversation_of[fits], minlength=len(rounds))
    totals = np.bincount(conversation_of[fits], weights=lengths.flat[fits], minlength=len(rounds)).astype(np.int64)
    kept_indices = np.flatnonzero(keep > 0)
    cut = set(np.flatnonzero((keep > 0) & (keep < rounds)).tolist())
    kept = [truncate_rounds(conversations[i], int(keep[i])) if i in cut else conversations[i] for i in kept_indices.tolist()]
    truncated, dropped = len(cut), int((keep == 0).sum())
    if truncated or dropped:
        log.warning("%s data: %d sample(s) truncated at a round boundary and %d dropped (first round alone longer "
                    "than data.max_seq_len=%s, counting %d tokens per image)", split, truncated, dropped, max_seq_len, tokens_per_image)
    if len(conversations) and not kept:
        raise DataError(f"{split} data: every sample is longer than data.max_seq_len={max_seq_len} even in its first round; raise the limit")
    return FittedConversations(kept, totals[kept_indices].tolist(), truncated, dropped, kept_indices.tolist())

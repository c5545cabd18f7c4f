"""`data.max_seq_len`: the length a sample takes in the decoder, and truncation at round
boundaries.

A sample's length counts its tokens with every `<image>` placeholder expanded to the model's
`tokens_per_image` visual tokens. A sample that is too long keeps its leading rounds that fit
(a round carries its images, so no image is ever cut); one whose first round alone does not fit
is dropped. Rendering of a round depends only on earlier rounds, so the kept prefix is exact.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from dsvl_exp.data.conversation import Conversation
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.template import ChatTemplate, tokenize_round

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FittedConversations:
    conversations: list[Conversation]
    lengths: list[int]  # decoder length of each kept conversation (visual tokens included)
    truncated: int
    dropped: int


def round_lengths(conversation: Conversation, tokenizer, template: ChatTemplate, tokens_per_image: int) -> list[int]:
    lengths = []
    for (prompt, answer), round_ in zip(template.render_conversation(conversation), conversation.rounds):
        ids, _ = tokenize_round(tokenizer, prompt, answer)
        lengths.append(len(ids) + round_.num_images * (tokens_per_image - 1))
    return lengths


def truncate_rounds(conversation: Conversation, keep: int) -> Conversation:
    rounds = conversation.rounds[:keep]
    images = conversation.images[: sum(r.num_images for r in rounds)]
    return replace(conversation, rounds=rounds, images=images, meta={**conversation.meta, "truncated_from_rounds": len(conversation.rounds)})


def fit_to_max_seq_len(
    conversations: Sequence[Conversation], tokenizer, template: ChatTemplate, tokens_per_image: int,
    max_seq_len: int | None, split: str,
) -> FittedConversations:
    kept, lengths, truncated, dropped = [], [], 0, 0
    for conversation in conversations:
        per_round = round_lengths(conversation, tokenizer, template, tokens_per_image)
        total, keep = 0, 0
        for length in per_round:
            if max_seq_len is not None and total + length > max_seq_len:
                break
            total += length
            keep += 1
        if keep == 0:
            dropped += 1
            continue
        if keep < len(per_round):
            truncated += 1
            conversation = truncate_rounds(conversation, keep)
        kept.append(conversation)
        lengths.append(total)
    if truncated or dropped:
        log.warning("%s data: %d sample(s) truncated at a round boundary and %d dropped (first round alone longer "
                    "than data.max_seq_len=%s, counting %d tokens per image)", split, truncated, dropped, max_seq_len, tokens_per_image)
    if conversations and not kept:
        raise DataError(f"{split} data: every sample is longer than data.max_seq_len={max_seq_len} even in its first round; raise the limit")
    return FittedConversations(kept, lengths, truncated, dropped)

"""Checks of every record's text before training starts (all formats, snapshots included).

An `<image>` placeholder anywhere but where a reader turned it into an image slot (an answer, a
question of a format that strips them, a pooled prompt) becomes an image token with no image:
training would stop mid-run in the model with no record named, at the same step on every resume.
Such a record is an error naming it (`data.on_bad_record=error`, the default) or is skipped and
counted (`skip`). Empty questions and repeated record ids are allowed but counted and logged.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from dsvl_exp.constants import IMAGE_TOKEN
from dsvl_exp.data.conversation import Conversation
from dsvl_exp.data.errors import DataError

log = logging.getLogger(__name__)
BAD_RECORD_POLICIES = ("error", "skip")
STRAY_PLACEHOLDER = "stray_image_placeholder"  # the rule name in the dropped counts


def stray_placeholder(conversation: Conversation) -> str | None:
    """The first text field holding `<image>` after the reader took out the real slots, or None."""
    for k, round_ in enumerate(conversation.rounds):
        if IMAGE_TOKEN in round_.question:
            return f"rounds[{k}].question"
        if IMAGE_TOKEN in round_.answer:
            return f"rounds[{k}].answer"
    return None


def check_record_texts(conversations: Sequence[Conversation], on_bad_record: str, dataset: str) -> tuple[list[Conversation], int]:
    """Conversations without stray placeholders, and how many were skipped (policy `skip`)."""
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise DataError(f"data.on_bad_record={on_bad_record!r}; choose one of {BAD_RECORD_POLICIES}")
    kept, skipped = [], 0
    for conversation in conversations:
        field = stray_placeholder(conversation)
        if field is None:
            kept.append(conversation)
            continue
        where = f"{conversation.source or dataset}: sample {conversation.id}"
        if on_bad_record == "error":
            raise DataError(f"{where}: {field} holds '{IMAGE_TOKEN}', which only marks an image slot in a question; remove "
                            "it from the text or set data.on_bad_record=skip to skip such records (counted)")
        skipped += 1
        if skipped <= 5:
            log.warning("%s: skipped, %s holds '%s' (data.on_bad_record=skip)", where, field, IMAGE_TOKEN)
    if skipped:
        log.warning("dataset %s: skipped %d record(s) with a stray '%s' placeholder", dataset, skipped, IMAGE_TOKEN)
    warn_questionable(kept, dataset)
    return kept, skipped


def warn_questionable(conversations: Sequence[Conversation], dataset: str) -> dict[str, int]:
    """Counts of rounds with an empty question and of repeated record ids, each logged once."""
    empty = [c for c in conversations if any(not r.question.strip() for r in c.rounds)]
    repeats = {id_: n for id_, n in Counter(c.id for c in conversations).items() if n > 1}
    if empty:
        first = empty[0]
        log.warning("dataset %s: %d record(s) have a round with an empty question (first: %s, sample %s); they train "
                    "on the answer alone", dataset, len(empty), first.source or dataset, first.id)
    if repeats:
        id_, n = next(iter(repeats.items()))
        log.warning("dataset %s: %d record id(s) occur more than once (%d records in all; first: %r, %d times); ids "
                    "name records in messages and results, so make them unique", dataset, len(repeats),
                    sum(repeats.values()), id_, n)
    return {"empty_question": len(empty), "duplicate_id": sum(repeats.values())}

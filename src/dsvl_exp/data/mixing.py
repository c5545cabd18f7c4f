"""Shaping a dataset's conversations: concatenation into multi-image samples, subsetting by
count or weight, and the seeded train/eval split. All randomness comes from the given rng."""

from __future__ import annotations

import random
from collections.abc import Sequence

from dsvl_exp.data.conversation import Conversation
from dsvl_exp.data.errors import DataError


def merge_conversations(group: Sequence[Conversation]) -> Conversation:
    """One conversation that plays the group's conversations one after another."""
    if len(group) == 1:
        return group[0]
    return Conversation(
        id="+".join(c.id for c in group),
        images=tuple(image for c in group for image in c.images),
        rounds=tuple(r for c in group for r in c.rounds),
        source=group[0].source,
        meta={"concatenated": len(group)},
    )


def concatenate(conversations: Sequence[Conversation], max_group: int, max_images: int, rng: random.Random) -> list[Conversation]:
    """The reference's random grouping (shuffle, then consecutive groups of 1..max_group), fixed:
    every conversation lands in exactly one group (the reference drops the first group), and a
    group closes early rather than exceed `max_images` images."""
    if max_group < 1:
        raise DataError(f"concatenate must be >= 1, got {max_group}")
    if max_group == 1:
        return list(conversations)
    order = list(conversations)
    rng.shuffle(order)
    grouped, start = [], 0
    while start < len(order):
        size = rng.randint(1, max_group)
        group, images = [order[start]], order[start].num_images
        for candidate in order[start + 1 : start + size]:
            if images + candidate.num_images > max_images:
                break
            group.append(candidate)
            images += candidate.num_images
        grouped.append(merge_conversations(group))
        start += len(group)
    return grouped


def subsample(conversations: Sequence[Conversation], samples, weight: float | None, rng: random.Random, name: str) -> list[Conversation]:
    """`samples`: "all" or a count drawn without replacement. `weight`: a sampling ratio of the
    dataset's own size (0.5 = a random half; 2.0 = every sample twice; 1.5 = all plus a random half)."""
    items = list(conversations)
    if weight is not None:
        if samples not in (None, "all"):
            raise DataError(f"dataset {name}: set either samples or weight, not both")
        if weight <= 0:
            raise DataError(f"dataset {name}: weight must be > 0, got {weight}")
        whole, fraction = divmod(weight, 1.0)
        return items * int(whole) + rng.sample(items, round(fraction * len(items)))
    if samples in (None, "all"):
        return items
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise DataError(f"dataset {name}: samples must be 'all' or a positive integer, got {samples!r}")
    if samples > len(items):
        raise DataError(f"dataset {name}: samples={samples} but it has only {len(items)}; lower samples or use weight to repeat data")
    return rng.sample(items, samples)


def split_train_eval(conversations: Sequence[Conversation], eval_ratio: float, rng: random.Random) -> tuple[list, list]:
    """Shuffle, then hold out the last `eval_ratio` of them (the reference's 1 - data_train_split_ratio)."""
    if not 0.0 <= eval_ratio < 1.0:
        raise DataError(f"data.eval_split must be in [0, 1), got {eval_ratio}")
    order = list(conversations)
    rng.shuffle(order)
    held_out = round(len(order) * eval_ratio)
    if eval_ratio > 0 and held_out == 0:
        held_out = 1
    return order[: len(order) - held_out], order[len(order) - held_out :]

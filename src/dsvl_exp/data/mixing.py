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
    meta: dict = {"concatenated": len(group)}
    if any("image_names" in c.meta for c in group):
        meta["image_names"] = tuple(name for c in group for name in c.meta.get("image_names", c.images))
    return Conversation(
        id="+".join(c.id for c in group),
        images=tuple(image for c in group for image in c.images),
        rounds=tuple(r for c in group for r in c.rounds),
        source=group[0].source,
        meta=meta,
    )


def concatenation_groups(image_counts: Sequence[int], max_group: int, max_images: int, rng: random.Random) -> list[tuple[int, ...]]:
    """The reference's random grouping (shuffle, then consecutive groups of 1..max_group), fixed:
    every item lands in exactly one group (the reference drops the first group), and a group
    closes early rather than exceed `max_images` images. Returns groups of item indices."""
    if max_group < 1:
        raise DataError(f"concatenate must be >= 1, got {max_group}")
    if max_group == 1:
        return [(i,) for i in range(len(image_counts))]
    order = list(range(len(image_counts)))
    rng.shuffle(order)
    grouped, start = [], 0
    while start < len(order):
        size = rng.randint(1, max_group)
        group, images = [order[start]], image_counts[order[start]]
        for candidate in order[start + 1 : start + size]:
            if images + image_counts[candidate] > max_images:
                break
            group.append(candidate)
            images += image_counts[candidate]
        grouped.append(tuple(group))
        start += len(group)
    return grouped


def concatenate(conversations: Sequence[Conversation], max_group: int, max_images: int, rng: random.Random) -> list[Conversation]:
    groups = concatenation_groups([c.num_images for c in conversations], max_group, max_images, rng)
    return [merge_conversations([conversations[i] for i in group]) for group in groups]


def regroup(slots: Sequence[Sequence[int]], image_counts: Sequence[int], rng: random.Random) -> list[list[int]]:
    """New members for fixed concatenation slots: the members of all slots are shuffled among the
    positions that hold a member with the same number of images. Every slot keeps its size and
    image count (so its sample count and the image limit hold every epoch) and every member is
    used as often as before, while which conversations are joined is drawn anew."""
    new = [list(slot) for slot in slots]
    positions_by_count: dict[int, list[tuple[int, int]]] = {}
    for s, slot in enumerate(slots):
        for k, member in enumerate(slot):
            positions_by_count.setdefault(image_counts[member], []).append((s, k))
    for count in sorted(positions_by_count):
        positions = positions_by_count[count]
        members = [slots[s][k] for s, k in positions]
        rng.shuffle(members)
        for (s, k), member in zip(positions, members):
            new[s][k] = member
    return new


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

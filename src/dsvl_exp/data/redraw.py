"""`data.redraw_each_epoch`: every epoch draws prompt choice, round order, tag style and
concatenation groups anew, as the reference does (its `__getitem__` draws on every call).

Epoch 0 is the build-time draw. Epoch e > 0 re-runs each training dataset's reader draw with
an rng seeded from (seed, e, dataset), and re-draws the members of every concatenation group
among the groups of that dataset (`mixing.regroup`), so the result is a pure function of
(seed, epoch): a resumed run that calls `set_epoch(e)` sees the same data as the first run did.

What stays fixed across epochs, on purpose: which records are trained on (the image checks,
`samples` / `weight` and the eval split are decided once, so held-out data never leaks into
training), the number of samples (an epoch has the same number of steps) and each group's size
and per-member image counts (so `max_images_per_sample` holds without re-checking).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from dsvl_exp.data.build import BuiltData
from dsvl_exp.data.conversation import Conversation
from dsvl_exp.data.mixing import merge_conversations, regroup


class EpochDraws:
    """The training conversations of any epoch, aligned to `built.train[i] for i in indices`."""

    def __init__(self, built: BuiltData, seed: int, indices: Sequence[int] | None = None):
        self.draws = built.draws
        refs = built.train_refs
        self.refs = [refs[i] for i in indices] if indices is not None else list(refs)
        self.seed = seed

    def conversations(self, epoch: int) -> list[Conversation]:
        if epoch == 0:
            return [self.draws[d].sample(g) for d, g in self.refs]
        result: list[Conversation | None] = [None] * len(self.refs)
        positions_by_dataset: dict[int, list[int]] = {}
        for position, (d, _) in enumerate(self.refs):
            positions_by_dataset.setdefault(d, []).append(position)
        for d, positions in sorted(positions_by_dataset.items()):
            dataset = self.draws[d]
            base = dataset.base
            if dataset.redraw is not None:
                drawn = dataset.redraw(random.Random(f"{self.seed}/epoch/{epoch}/train/{d}/{dataset.name}"))
                base = [drawn[k] for k in dataset.kept]
            slots = [dataset.groups[self.refs[p][1]] for p in positions]
            if dataset.concatenate > 1:
                counts = [c.num_images for c in dataset.base]
                slots = regroup(slots, counts, random.Random(f"{self.seed}/epoch/{epoch}/groups/{d}"))
            for position, members in zip(positions, slots):
                result[position] = merge_conversations([base[m] for m in members])
        return result  # type: ignore[return-value]

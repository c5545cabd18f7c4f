"""A length-grouped sampler with DistributedSampler semantics: each rank gets its own share of
every epoch, the order is a pure function of (seed, epoch), and `set_epoch` reshuffles.

Per epoch: shuffle all indices, cut them into mega-batches of `group_batches` global batches,
sort each mega-batch by length (longest first), cut it into global batches (micro batch x
ranks), and shuffle the order of those batches. Rank r takes the r-th micro batch of every global
batch, so the samples in one micro batch have similar lengths and padding shrinks, while the
data each step sees stays random.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    def __init__(self, lengths: Sequence[int], batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0, group_batches: int = 50):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.group_batches = group_batches
        self.epoch = 0
        self.global_batch = batch_size * num_replicas
        self.num_global_batches = len(self.lengths) // self.global_batch  # the remainder is dropped, as drop_last

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_global_batches * self.batch_size

    def global_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        order = order[: self.num_global_batches * self.global_batch]
        mega = self.global_batch * self.group_batches
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[k : k + self.global_batch] for k in range(0, len(chunk), self.global_batch)]
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[int]:
        for batch in self.global_batches():
            yield from batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

"""Padding fraction of the synthetic training mix with and without `data.group_by_length`.

    python scripts/bench_padding.py [--num-train 2000] [--batch-size 8] [--tokens-per-image 17] [--epochs 3]

Lengths are decoder lengths: text tokens plus `tokens_per_image` visual tokens per image (17 for
the tiny default CLIP: 32 px / patch 8 -> 16 patches + CLS). A micro batch is padded to its
longest sample rounded up to a multiple of 8, as the collator and model do. The fraction is
padding positions / all positions, over every batch of `--epochs` epochs, one rank.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from torch.utils.data import DistributedSampler

from dsvl_exp.data.build import build_conversations
from dsvl_exp.data.collate import round_up
from dsvl_exp.data.length import fit_to_max_seq_len
from dsvl_exp.data.sampler import LengthGroupedSampler
from dsvl_exp.data.template import ChatTemplate
from dsvl_exp.models.tokenizer import load_tokenizer

from bench_common import print_machine_header


def padding_fraction(lengths: list[int], order: list[int], batch_size: int, multiple: int = 8) -> float:
    padded = total = 0
    for start in range(0, len(order) - batch_size + 1, batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        width = round_up(max(batch), multiple)
        total += width * len(batch)
        padded += width * len(batch) - sum(batch)
    return padded / total


def epochs_of(sampler, epochs: int) -> list[list[int]]:
    orders = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    return orders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokens-per-image", type=int, default=17)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    print_machine_header()

    cache = os.environ.get("DSVL_CACHE_DIR") or tempfile.mkdtemp(prefix="dsvl_bench_")
    data = build_conversations({"root": os.path.join(cache, "synthetic"), "num_train": args.num_train, "num_eval": 10}, [], [])
    fitted = fit_to_max_seq_len(data.train, load_tokenizer(), ChatTemplate(), args.tokens_per_image, None, "train")
    lengths = fitted.lengths
    random_sampler = DistributedSampler(range(len(lengths)), num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
    grouped_sampler = LengthGroupedSampler(lengths, args.batch_size, num_replicas=1, rank=0, seed=0)
    print(f"synthetic mix: {len(lengths)} samples, lengths {min(lengths)}..{max(lengths)} "
          f"(mean {sum(lengths) / len(lengths):.1f}), micro batch {args.batch_size}, {args.tokens_per_image} tokens/image")
    for name, sampler in (("random (DistributedSampler)", random_sampler), ("group_by_length", grouped_sampler)):
        fractions = [padding_fraction(lengths, order, args.batch_size) for order in epochs_of(sampler, args.epochs)]
        print(f"{name:28s} padding fraction {sum(fractions) / len(fractions):.3f}  per epoch {[round(f, 3) for f in fractions]}")


if __name__ == "__main__":
    main()

"""Batching: right padding to a multiple of 8 for training, images stacked with per-sample counts;
left padding for generation (`left_padded`), so every prompt ends where decoding starts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsvl_exp.constants import IGNORE_INDEX, round_up  # noqa: F401 (round_up re-exported)


@dataclass
class DataCollator:
    pad_token_id: int
    pad_to_multiple_of: int = 8

    def __call__(self, samples: list[dict]) -> dict:
        length = round_up(max(len(s["input_ids"]) for s in samples), self.pad_to_multiple_of)
        batch = len(samples)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            input_ids[row, :n] = sample["input_ids"]
            labels[row, :n] = sample["labels"]
            attention_mask[row, :n] = 1
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "images": torch.cat([s["images"] for s in samples], dim=0),
            "image_num": [int(s["images"].shape[0]) for s in samples],
            "sample_ids": [s.get("id") for s in samples],  # named in errors (e.g. a non-finite loss)
        }


def left_padded(prompts: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of generation prompts, each row padded on the left."""
    length = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(prompts):
        input_ids[row, length - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, length - len(ids):] = 1
    return input_ids, attention_mask

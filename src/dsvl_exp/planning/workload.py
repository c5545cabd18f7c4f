"""What one epoch of the configured data asks of the model: how many training samples, and the
decoder length, images and supervised tokens of a sample. Lengths come from the run's length
cache when a previous run wrote it (all samples), else from a seeded sample of the data
tokenized here; supervised tokens always from a sample. Reading the data uses the recipe's own
`setup_data` and `fit_to_max_seq_len`, so what is dropped or truncated is what training drops."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from dsvl_exp.errors import UserError

log = logging.getLogger(__name__)
SAMPLE_SIZE = 1000
SUPERVISED_SAMPLE_SIZE = 200


@dataclass(frozen=True)
class DataProfile:
    source: str  # where the lengths came from
    train_samples: int  # kept after data.max_seq_len (estimated from the sample when sampled)
    lengths: np.ndarray  # decoder length per sample (visual tokens counted)
    images: np.ndarray  # images per sample
    supervised_fraction: float  # labelled positions / decoder positions, over the supervised sample


def _supervised_fraction(conversations, tokenizer, template, lengths) -> float:
    from dsvl_exp.constants import IGNORE_INDEX
    from dsvl_exp.data.template import tokenize_round

    labelled = 0
    for conversation in conversations[:SUPERVISED_SAMPLE_SIZE]:
        for prompt, answer in template.render_conversation(conversation):
            labelled += sum(label != IGNORE_INDEX for label in tokenize_round(tokenizer, prompt, answer)[1])
    return labelled / max(int(lengths[:SUPERVISED_SAMPLE_SIZE].sum()), 1)


def data_profile(cfg: DictConfig, tokenizer, tokens_per_image: int) -> DataProfile:
    """Raises UserError (with the data's own message) when the data cannot be read."""
    from dsvl_exp.config.validation import check_dataset_paths
    from dsvl_exp.data.length import fit_to_max_seq_len, lengths_cache_path
    from dsvl_exp.data.template import ChatTemplate
    from dsvl_exp.training.data_setup import setup_data

    check_dataset_paths(cfg)
    data = setup_data(cfg.data, cfg.seed)
    template = ChatTemplate(system_prompt=cfg.data.system_prompt)
    cache = (lengths_cache_path(cfg.data.cache_dir, data.key, "train", tokenizer, template, tokens_per_image,
                                cfg.data.max_seq_len)
             if cfg.data.cache_dir else None)
    if cache is not None and cache.is_file():
        fitted = fit_to_max_seq_len(data.train, tokenizer, template, tokens_per_image, cfg.data.max_seq_len, "train", cache)
        source, train_samples = f"length cache {cache.name} ({len(data.train)} samples)", len(fitted.conversations)
    else:
        sample = random.Random(cfg.seed).sample(data.train, min(SAMPLE_SIZE, len(data.train)))
        fitted = fit_to_max_seq_len(sample, tokenizer, template, tokens_per_image, cfg.data.max_seq_len, "train")
        source = f"a sample of {len(sample)} of {len(data.train)} samples (no length cache yet)"
        train_samples = round(len(data.train) * len(fitted.conversations) / max(len(sample), 1))
    if not fitted.conversations:
        raise UserError("the training data holds no sample: plan has nothing to time")
    lengths = np.asarray(fitted.lengths, dtype=np.int64)
    images = np.asarray([len(c.images) for c in fitted.conversations], dtype=np.int64)
    fraction = _supervised_fraction(fitted.conversations, tokenizer, template, lengths)
    return DataProfile(source, train_samples, lengths, images, fraction)


def expected_batch(profile: DataProfile, rows: int, pad_to_multiple_of: int, draws: int = 200, seed: int = 0) -> dict:
    """Mean over seeded random micro-batches of what the decoder sees: padded positions (to the
    batch's longest, rounded up as the collator does), real tokens, images and supervised tokens."""
    generator = np.random.default_rng(seed)
    totals = {"positions": 0.0, "tokens": 0.0, "images": 0.0}
    for _ in range(draws):
        picked = generator.integers(0, len(profile.lengths), size=rows)
        longest = int(profile.lengths[picked].max())
        totals["positions"] += rows * -(-longest // pad_to_multiple_of) * pad_to_multiple_of
        totals["tokens"] += float(profile.lengths[picked].sum())
        totals["images"] += float(profile.images[picked].sum())
    mean = {key: value / draws for key, value in totals.items()}
    mean["supervised"] = mean["tokens"] * profile.supervised_fraction
    return mean

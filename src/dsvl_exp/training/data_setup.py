"""The data half of the recipe: read and check the datasets the config names, then fit them to
max_seq_len and wrap them in loaders. `setup_data` reads the `data` group (the planner uses it
too); `setup_loaders` takes flat values."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler

from dsvl_exp.data.build import build_conversations
from dsvl_exp.data.collate import DataCollator
from dsvl_exp.data.dataset import ConversationDataset
from dsvl_exp.data.length import fit_to_max_seq_len, lengths_cache_path
from dsvl_exp.data.redraw import EpochDraws
from dsvl_exp.data.sampler import LengthGroupedSampler
from dsvl_exp.data.template import ChatTemplate
from dsvl_exp.errors import ConfigError
from dsvl_exp.training import distributed
from dsvl_exp.training.loop import ResumableSampler

log = logging.getLogger(__name__)


def setup_data(data_cfg: DictConfig, seed: int):
    """Read every dataset and check its records and images (before any model exists)."""
    return build_conversations(
        synthetic=OmegaConf.to_container(data_cfg.synthetic, resolve=True) if data_cfg.synthetic else None,
        train=OmegaConf.to_container(data_cfg.train, resolve=True),
        eval=OmegaConf.to_container(data_cfg.eval, resolve=True),
        data_path=data_cfg.data_path, eval_split=data_cfg.eval_split, seed=seed, cache_dir=data_cfg.cache_dir,
        max_images_per_sample=data_cfg.max_images_per_sample, verify_images=data_cfg.verify_images,
        on_missing_image=data_cfg.on_missing_image, on_bad_record=data_cfg.on_bad_record,
    )


@dataclass(frozen=True)
class LoaderSettings:
    """How the loaders cut and batch the data (the recipe fills it from data.*, train.*, eval.*)."""
    max_seq_len: int | None
    micro_batch_size: int
    eval_batch_size: int
    group_by_length: bool
    pad_to_multiple_of: int
    num_workers: int
    seed: int
    cache_dir: str | None = None
    redraw_each_epoch: bool = False
    pin_memory: bool = False


def setup_loaders(data, tokenizer, template: ChatTemplate, tokens_per_image: int, image_processor,
                  settings: LoaderSettings):
    """The train and eval loaders of `data` fitted to max_seq_len, and the data counts to log."""
    fitted_train, fitted_eval = (
        fit_to_max_seq_len(conversations, tokenizer, template, tokens_per_image, settings.max_seq_len, split,
                           cache_path=lengths_cache_path(settings.cache_dir, data.key, split, tokenizer, template,
                                                         tokens_per_image, settings.max_seq_len)
                           if settings.cache_dir else None)
        for conversations, split in ((data.train, "train"), (data.eval, "eval"))
    )
    stats = {
        "data/train_samples": len(fitted_train.conversations), "data/eval_samples": len(fitted_eval.conversations),
        "data/truncated": fitted_train.truncated + fitted_eval.truncated,
        "data/dropped_too_long": fitted_train.dropped + fitted_eval.dropped,
        "data/skipped_missing_image": data.skipped_missing_image,
        **{f"data/dropped_{rule}": count for rule, count in data.dropped.items()},
    }
    log.info("data: %s", stats)
    draws = EpochDraws(data, settings.seed, fitted_train.kept) if settings.redraw_each_epoch else None
    train_set = ConversationDataset(fitted_train.conversations, tokenizer, image_processor, template, draws,
                                    settings.max_seq_len, tokens_per_image)
    eval_set = ConversationDataset(fitted_eval.conversations, tokenizer, image_processor, template)
    collator = DataCollator(tokenizer.pad_token_id, pad_to_multiple_of=settings.pad_to_multiple_of)
    return (*loaders(train_set, eval_set, fitted_train.lengths, collator, settings), stats)


def loaders(train_set, eval_set, train_lengths, collator, settings: LoaderSettings) -> tuple[DataLoader, DataLoader]:
    rank, world = distributed.rank(), distributed.world_size()
    micro_batch_size, seed = settings.micro_batch_size, settings.seed
    if settings.group_by_length:
        sampler = LengthGroupedSampler(train_lengths, micro_batch_size, world, rank, seed=seed)
    else:
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    # The loader's own generator: iter(loader) draws a base seed, and drawing it from the global
    # RNG would make a resumed run's dropout differ from an uninterrupted one.
    train_loader = DataLoader(train_set, batch_size=micro_batch_size, sampler=ResumableSampler(sampler, micro_batch_size),
                              collate_fn=collator, num_workers=settings.num_workers, drop_last=True,
                              pin_memory=settings.pin_memory, generator=torch.Generator().manual_seed(seed))
    eval_loader = DataLoader(eval_set, batch_size=settings.eval_batch_size, collate_fn=collator,
                             num_workers=settings.num_workers, pin_memory=settings.pin_memory,
                             sampler=DistributedSampler(eval_set, num_replicas=world, rank=rank, shuffle=False))
    if len(train_loader) == 0:
        raise ConfigError(
            f"{len(train_set)} training conversations give no full batch of "
            f"train.micro_batch_size={micro_batch_size} x {world} rank(s); lower the batch size or add data")
    return train_loader, eval_loader

"""One training run on this rank: build everything from the resolved config, train, evaluate.

This is the recipe layer: it reads the config and hands flat values to builders; models, data
and the loop never see the config object."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler
from transformers import set_seed

from dsvl_exp.data.build import build_conversations
from dsvl_exp.data.collate import DataCollator
from dsvl_exp.data.dataset import ConversationDataset
from dsvl_exp.data.debug_dump import dump_samples
from dsvl_exp.data.fingerprint import data_fingerprint
from dsvl_exp.data.length import fit_to_max_seq_len, lengths_cache_path
from dsvl_exp.data.redraw import EpochDraws
from dsvl_exp.data.sampler import LengthGroupedSampler
from dsvl_exp.data.template import ChatTemplate
from dsvl_exp.models.freezing import count_parameters
from dsvl_exp.training import distributed
from dsvl_exp.training.engine import (
    build_engine,
    deepspeed_config,
    model_construction,
    parameter_groups,
    resolve_grad_accum,
    warmup_steps_for,
)
from dsvl_exp.training.evaluation import evaluate_answers, evaluate_loss
from dsvl_exp.training.footprint import write_rank_footprint
from dsvl_exp.training.logging import MetricsLogger
from dsvl_exp.training.model_setup import build_model, configure_training
from dsvl_exp.training.loop import train_loop
from dsvl_exp.training.reporting import print_config_tree, print_parameter_table, print_summary

log = logging.getLogger(__name__)


def check_monitor(monitor: str, generation: bool) -> None:
    """Fail before training, not after it, when the returned metric will not exist."""
    available = ["train/loss", "eval/loss"] + (["eval/accuracy"] if generation else [])
    if monitor not in available:
        raise ValueError(f"eval.monitor={monitor!r} will not be logged; choose one of {available}"
                         + ("" if generation else " (eval/accuracy needs eval.generation=true)"))


def run_training(cfg: DictConfig, run_dir: Path) -> float:
    check_monitor(cfg.eval.monitor, cfg.eval.generation)
    distributed.init_process_group()
    rank_zero = distributed.is_rank_zero()
    world = distributed.world_size()
    device = distributed.device()
    if rank_zero:
        print_config_tree(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    set_seed(cfg.seed)

    grad_accum = resolve_grad_accum(cfg.train.global_batch_size, cfg.train.micro_batch_size, world, cfg.train.grad_accum)
    ds_config = deepspeed_config(
        zero=OmegaConf.to_container(cfg.zero, resolve=True),
        micro_batch_size=cfg.train.micro_batch_size,
        grad_accum=grad_accum,
        world_size=world,
        precision=cfg.train.precision,
        gradient_clipping=cfg.train.gradient_clipping,
    )

    # ---- model -------------------------------------------------------------------------------
    tokenizer = instantiate(cfg.tokenizer)
    # ZeRO-3: built partitioned; the yielded HfDeepSpeedConfig must outlive the model's use
    with model_construction(ds_config) as hf_deepspeed_config:  # noqa: F841
        model = build_model(cfg, tokenizer)
    configure_training(model, cfg)
    parameter_counts = count_parameters(model)
    if rank_zero:
        print_parameter_table(parameter_counts)
        (run_dir / "parameters.json").write_text(json.dumps(parameter_counts, indent=2))

    # ---- data --------------------------------------------------------------------------------
    data = build_conversations(
        synthetic=OmegaConf.to_container(cfg.data.synthetic, resolve=True) if cfg.data.synthetic else None,
        train=OmegaConf.to_container(cfg.data.train, resolve=True),
        eval=OmegaConf.to_container(cfg.data.eval, resolve=True),
        data_path=cfg.data.data_path,
        eval_split=cfg.data.eval_split,
        max_images_per_sample=cfg.data.max_images_per_sample,
        on_missing_image=cfg.data.on_missing_image,
        verify_images=cfg.data.verify_images,
        seed=cfg.seed,
    )
    template = ChatTemplate(system_prompt=cfg.data.system_prompt)
    fitted_train, fitted_eval = (
        fit_to_max_seq_len(conversations, tokenizer, template, model.tokens_per_image, cfg.data.max_seq_len, split,
                           cache_path=lengths_cache_path(cfg.data.cache_dir, data.key, split, tokenizer, template, model.tokens_per_image)
                           if cfg.data.cache_dir else None)
        for conversations, split in ((data.train, "train"), (data.eval, "eval"))
    )
    train_conversations, eval_conversations = fitted_train.conversations, fitted_eval.conversations
    data_stats = {
        "data/train_samples": len(train_conversations), "data/eval_samples": len(eval_conversations),
        "data/truncated": fitted_train.truncated + fitted_eval.truncated,
        "data/dropped_too_long": fitted_train.dropped + fitted_eval.dropped,
        "data/skipped_missing_image": data.skipped_missing_image,
        **{f"data/dropped_{rule}": count for rule, count in data.dropped.items()},
    }
    log.info("data: %s", data_stats)
    if rank_zero:
        fingerprint = data_fingerprint(data.annotation_files, train_conversations, eval_conversations, template, tokenizer)
        (run_dir / "data_fingerprint.json").write_text(json.dumps(fingerprint, indent=2))
        if cfg.data.debug_dump:
            dump_samples(train_conversations, template, tokenizer.eos_token, cfg.data.debug_dump, run_dir)
    processor = model.vision.image_processor
    draws = EpochDraws(data, cfg.seed, fitted_train.kept) if cfg.data.redraw_each_epoch else None
    train_set = ConversationDataset(train_conversations, tokenizer, processor, template, draws, cfg.data.max_seq_len, model.tokens_per_image)
    eval_set = ConversationDataset(eval_conversations, tokenizer, processor, template)
    collator = DataCollator(tokenizer.pad_token_id, pad_to_multiple_of=cfg.model.pad_to_multiple_of)
    rank = distributed.rank()
    if cfg.data.group_by_length:
        train_sampler = LengthGroupedSampler(fitted_train.lengths, cfg.train.micro_batch_size, world, rank, seed=cfg.seed)
    else:
        train_sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.train.micro_batch_size,
        sampler=train_sampler,
        collate_fn=collator,
        num_workers=cfg.data.num_workers,
        drop_last=True,
    )
    eval_loader = DataLoader(
        eval_set,
        batch_size=cfg.eval.batch_size,
        sampler=DistributedSampler(eval_set, num_replicas=world, rank=rank, shuffle=False),
        collate_fn=collator,
        num_workers=cfg.data.num_workers,
    )
    if len(train_loader) == 0:
        raise ValueError(
            f"{len(train_set)} training conversations give no full batch of "
            f"train.micro_batch_size={cfg.train.micro_batch_size} x {world} rank(s); lower the batch size or add data"
        )

    # ---- engine ------------------------------------------------------------------------------
    if cfg.train.max_steps is not None:
        max_steps = int(cfg.train.max_steps)
    elif cfg.train.epochs is not None:
        max_steps = int(cfg.train.epochs) * math.ceil(len(train_loader) / grad_accum)
    else:
        raise ValueError("set train.max_steps or train.epochs")
    groups = parameter_groups(model, cfg.optim.lr, cfg.optim.embedding_lr, cfg.optim.weight_decay)
    engine, lr_scheduler = build_engine(
        model,
        groups,
        lr=cfg.optim.lr,
        betas=list(cfg.optim.betas),
        eps=cfg.optim.eps,
        scheduler=cfg.optim.scheduler,
        total_steps=max_steps,
        warmup_steps=warmup_steps_for(max_steps, cfg.optim.warmup_ratio, cfg.optim.warmup_steps),
        ds_config=ds_config,
    )

    # ---- train -------------------------------------------------------------------------------
    logger = MetricsLogger(
        run_dir,
        wandb_settings=OmegaConf.to_container(cfg.logger.wandb, resolve=True),
        config=OmegaConf.to_container(cfg, resolve=True),
        enabled=rank_zero,
    )
    logger.log(data_stats, step=0)
    synced_gpus = int(cfg.zero.stage) == 3 and world > 1
    eval_conversation_subset = eval_conversations[: cfg.eval.max_conversations]

    def evaluate(step: int) -> dict:
        metrics = {"eval/loss": evaluate_loss(engine, eval_loader, device, cfg.eval.max_batches)}
        if cfg.eval.generation and eval_conversation_subset:
            accuracy, examples = evaluate_answers(
                engine.module, eval_conversation_subset, tokenizer, template, eval_set.pixel_values, device,
                batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens, synced_gpus=synced_gpus,
            )
            metrics["eval/accuracy"] = accuracy
            if rank_zero and examples:
                log.info("step %d eval examples: %s", step, examples[:3])
        return metrics

    if cfg.eval.at_start:
        logger.log(evaluate(0), step=0)
    last_train = train_loop(
        engine,
        lr_scheduler,
        train_loader,
        device,
        logger,
        evaluate,
        max_steps=max_steps,
        grad_accum=grad_accum,
        tokens_per_image=model.tokens_per_image,
        log_every_n_steps=cfg.train.log_every_n_steps,
        eval_every_n_steps=cfg.eval.every_n_steps,
        show_progress=cfg.train.progress_bar and rank_zero,
    )
    final_eval = evaluate(max_steps)
    logger.log(final_eval, step=max_steps)
    summary = {**last_train, **final_eval, "steps": max_steps}
    logger.summary(summary)
    logger.close()
    write_rank_footprint(run_dir, engine, rank, world)
    if rank_zero:
        print_summary(run_dir, summary)
    return float(summary[cfg.eval.monitor])

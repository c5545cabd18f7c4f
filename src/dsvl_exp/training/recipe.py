"""One training run on this rank, in phases:

    setup run -> setup data -> setup model -> setup loaders -> setup engine -> train -> save -> cleanup

`train(cfg, run_dir)` is the only function that reads the config; each phase takes flat values.
Data is read and checked before any model is built, so a missing image or a malformed record
fails in seconds, not after minutes of loading 7B weights. (Fitting samples to max_seq_len and
the image processor need the model's tokens per image and vision tower, so those come after.)
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler
from transformers import set_seed

from dsvl_exp.config.choices import NonFiniteAction
from dsvl_exp.data.build import build_conversations
from dsvl_exp.data.collate import DataCollator
from dsvl_exp.data.dataset import ConversationDataset
from dsvl_exp.data.debug_dump import dump_samples
from dsvl_exp.data.fingerprint import data_fingerprint
from dsvl_exp.data.length import fit_to_max_seq_len, lengths_cache_path
from dsvl_exp.data.redraw import EpochDraws
from dsvl_exp.data.sampler import LengthGroupedSampler
from dsvl_exp.data.template import ChatTemplate
from dsvl_exp.models.flops import flop_counts
from dsvl_exp.errors import ConfigError
from dsvl_exp.models.freezing import count_parameters
from dsvl_exp.repro import manifest
from dsvl_exp.training import checkpoint as checkpoints
from dsvl_exp.training import distributed, resume
from dsvl_exp.training.engine import (
    build_engine,
    build_optimizer,
    deepspeed_config,
    holds_zero_partitions,
    model_construction,
    parameter_groups,
    resolve_grad_accum,
    warmup_steps_for,
)
from dsvl_exp.training.evaluation import evaluate_answers, evaluate_loss
from dsvl_exp.training.footprint import write_rank_footprint
from dsvl_exp.training.interrupt import StopRequest
from dsvl_exp.training.logging import MetricsLogger
from dsvl_exp.training.loop import BatchStream, LoopState, ResumableSampler, monitor_mode, train_loop
from dsvl_exp.training.model_setup import build_model, configure_training
from dsvl_exp.training.reporting import print_config_tree, print_parameter_table, print_summary
from dsvl_exp.training.throughput import device_peak
from dsvl_exp.training.safe_loading import checkpoint_loading

log = logging.getLogger(__name__)


# ---- phases ------------------------------------------------------------------------------------
def setup_run(run_dir: Path, checkpoint_dir: Path, resume_choice: str | None, allow_config_change: bool,
              config: dict) -> Path | None:
    """The checkpoint to continue from (None: from step 0). Every rank decides the same."""
    if resume_choice is None:
        resume.refuse_used_run_dir(run_dir, checkpoint_dir)
        source = None
    else:
        source = resume.find_checkpoint(resume_choice, checkpoint_dir)
        if source is not None:
            saved = OmegaConf.to_container(OmegaConf.load(source / checkpoints.CONFIG), resolve=True)
            resume.check_config_change(saved, config, source, allow_config_change)
            resume.check_world_size(checkpoints.read_trainer_state(source), distributed.world_size(), source)
    if distributed.is_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_choice is not None:
            step = checkpoints.read_trainer_state(source)["step"] if source else 0
            dropped = resume.truncate_metrics(run_dir / "metrics.jsonl", step if source else -1)
            log.info("resuming from %s (step %d)%s", source or "scratch (no checkpoint yet)", step,
                     f"; dropped {dropped} metrics record(s) logged after it" if dropped else "")
        OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    distributed.barrier()  # no rank checks the run directory after rank 0 started writing to it
    return source


def setup_data(data_cfg: DictConfig, seed: int):
    """Read every dataset and check its records and images (before any model exists)."""
    return build_conversations(
        synthetic=OmegaConf.to_container(data_cfg.synthetic, resolve=True) if data_cfg.synthetic else None,
        train=OmegaConf.to_container(data_cfg.train, resolve=True),
        eval=OmegaConf.to_container(data_cfg.eval, resolve=True),
        data_path=data_cfg.data_path,
        eval_split=data_cfg.eval_split,
        max_images_per_sample=data_cfg.max_images_per_sample,
        on_missing_image=data_cfg.on_missing_image,
        on_bad_record=data_cfg.on_bad_record,
        verify_images=data_cfg.verify_images,
        seed=seed,
        cache_dir=data_cfg.cache_dir,
    )


def setup_model(cfg: DictConfig, tokenizer, ds_config: dict, run_dir: Path):
    # ZeRO-3: built partitioned; the returned HfDeepSpeedConfig must outlive the model's use
    with model_construction(ds_config) as hf_deepspeed_config:
        model = build_model(cfg, tokenizer)
    configure_training(model, cfg)
    parameter_counts = count_parameters(model)
    if distributed.is_rank_zero():
        print_parameter_table(parameter_counts)
        (run_dir / "parameters.json").write_text(json.dumps(parameter_counts, indent=2))
    return model, hf_deepspeed_config


def setup_loaders(data, tokenizer, template: ChatTemplate, tokens_per_image: int, image_processor,
                  max_seq_len: int | None, micro_batch_size: int, eval_batch_size: int, group_by_length: bool,
                  pad_to_multiple_of: int, num_workers: int, seed: int, cache_dir: str | None = None,
                  redraw_each_epoch: bool = False, pin_memory: bool = False):
    fitted_train, fitted_eval = (
        fit_to_max_seq_len(conversations, tokenizer, template, tokens_per_image, max_seq_len, split,
                           cache_path=lengths_cache_path(cache_dir, data.key, split, tokenizer, template, tokens_per_image,
                                                         max_seq_len)
                           if cache_dir else None)
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
    draws = EpochDraws(data, seed, fitted_train.kept) if redraw_each_epoch else None
    train_set = ConversationDataset(fitted_train.conversations, tokenizer, image_processor, template, draws, max_seq_len,
                                    tokens_per_image)
    eval_set = ConversationDataset(fitted_eval.conversations, tokenizer, image_processor, template)
    collator = DataCollator(tokenizer.pad_token_id, pad_to_multiple_of=pad_to_multiple_of)
    rank, world = distributed.rank(), distributed.world_size()
    if group_by_length:
        sampler = LengthGroupedSampler(fitted_train.lengths, micro_batch_size, world, rank, seed=seed)
    else:
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    # The loader's own generator: iter(loader) draws a base seed, and drawing it from the global
    # RNG would make a resumed run's dropout differ from an uninterrupted one.
    train_loader = DataLoader(train_set, batch_size=micro_batch_size, sampler=ResumableSampler(sampler, micro_batch_size),
                              collate_fn=collator, num_workers=num_workers, drop_last=True, pin_memory=pin_memory,
                              generator=torch.Generator().manual_seed(seed))
    eval_loader = DataLoader(eval_set, batch_size=eval_batch_size, collate_fn=collator, num_workers=num_workers,
                             pin_memory=pin_memory,
                             sampler=DistributedSampler(eval_set, num_replicas=world, rank=rank, shuffle=False))
    if len(train_loader) == 0:
        raise ConfigError(
            f"{len(train_set)} training conversations give no full batch of "
            f"train.micro_batch_size={micro_batch_size} x {world} rank(s); lower the batch size or add data")
    return train_loader, eval_loader, stats


def total_steps(max_steps: int | None, epochs: int | None, batches_per_epoch: int, grad_accum: int) -> int:
    if max_steps is not None:
        return int(max_steps)
    if epochs is not None:
        return int(epochs) * math.ceil(batches_per_epoch / grad_accum)
    raise ConfigError("set train.max_steps or train.epochs")


def setup_engine(model, optim: DictConfig, max_steps: int, ds_config: dict):
    """The optimizer and schedule from their `_target_` partials, then the engine around them."""
    groups = parameter_groups(model, optim.lr, optim.embedding_lr, optim.weight_decay)
    optimizer = call_configured("optim.optimizer", optim.optimizer,
                                lambda make: build_optimizer(make, groups, optim.lr))
    warmup_steps = warmup_steps_for(max_steps, optim.warmup_ratio, optim.warmup_steps)
    lr_scheduler = call_configured("optim.scheduler", optim.scheduler, lambda make: make(
        optimizer=optimizer, num_warmup_steps=warmup_steps, num_training_steps=max_steps))
    return build_engine(model, optimizer, lr_scheduler, ds_config)


def call_configured(key: str, node: DictConfig, call):
    """`call(instantiate(node))`, a target that does not exist or refuses its arguments named by key."""
    log.info("Instantiating %s <%s>", key, node._target_)
    try:
        return call(instantiate(node))
    except (InstantiationException, TypeError) as error:
        raise ConfigError(f"{key}._target_={node._target_}: {error.__cause__ or error}. Name a class or function "
                          f"(module.name) that takes these arguments, or pick another option of its group") from None


def restore(engine, source: Path | None, trust: bool = False) -> tuple[LoopState, dict]:
    """The loop state and trainer state of `source` (weights etc. go into `engine`)."""
    if source is None:
        return LoopState(), {}
    trainer_state, rank_state = checkpoints.load_checkpoint(engine, source, trust)
    state = LoopState(**rank_state["loop"])
    state.best_value, state.best_step = trainer_state["best_value"], trainer_state["best_step"]
    checkpoints.set_rng_state(rank_state["rng"])  # last: nothing may draw between here and the loop
    return state, trainer_state


def make_saver(engine, checkpoint_dir: Path, state: LoopState, run_facts: dict, config_yaml: str, keep_last: int | None):
    """`save(step, is_best)`: a checkpoint of the engine and the loop, `best` moved when it is one."""
    def save(step: int, is_best: bool) -> None:
        if not checkpoints.parameters_finite(engine):
            raise checkpoints.CheckpointError(f"the weights are not finite after step {step}; not saving over the last good checkpoint "
                             f"({checkpoints.read_latest(checkpoint_dir)}). Lower optim.lr or check the data")
        trainer_state = {"step": step, "epoch": state.epoch, "position": state.position,
                         "best_value": state.best_value, "best_step": state.best_step,
                         "last_train": state.last_train, "last_eval": state.last_eval, **run_facts}
        rank_state = {"loop": state.to_dict(), "rng": checkpoints.rng_state()}
        started = time.perf_counter()
        folder = checkpoints.save_checkpoint(engine, checkpoint_dir, step, trainer_state, rank_state, config_yaml)
        if distributed.is_rank_zero():
            if is_best:
                checkpoints.publish_best(checkpoint_dir, folder.name)
            deleted = checkpoints.prune(checkpoint_dir, keep_last)
            log.info("checkpoint %s saved in %.2f s%s%s", folder, time.perf_counter() - started,
                     " (best so far)" if is_best else "", f"; deleted {', '.join(deleted)}" if deleted else "")
        distributed.barrier()
    return save


def save_exports(engine, tokenizer, run_dir: Path, checkpoint_dir: Path, final_step: int, summary: dict) -> None:
    """<run dir>/export from the final weights; <run dir>/best from the best checkpoint (loaded
    back into the engine when it is an earlier step: training is over, nothing else needs it)."""
    from dsvl_exp.training.exporting import card_summary, export_from_engine

    final = card_summary(final_step, {key: value for key, value in summary.items() if key != "steps"}, {})
    export_from_engine(engine, tokenizer, run_dir / "export", training_summary=final)
    best = checkpoints.best_tag(checkpoint_dir)
    if best is None:
        return
    best_state = checkpoints.read_trainer_state(checkpoint_dir / best)
    best_summary = card_summary(best_state["step"], best_state["last_train"], best_state["last_eval"])
    if best != checkpoints.tag_for(final_step):
        with checkpoint_loading(source=checkpoint_dir / best):  # this run's own files: never needs trust
            engine.load_checkpoint(str(checkpoint_dir), tag=best)
        export_from_engine(engine, tokenizer, run_dir / "best", training_summary=best_summary)
    elif distributed.is_rank_zero():  # the final weights are the best: the same files
        checkpoints.copy_folder(run_dir / "export", run_dir / "best")
    distributed.barrier()


# ---- the run -----------------------------------------------------------------------------------
def train(cfg: DictConfig, run_dir: Path) -> float:
    distributed.init_process_group()
    rank_zero, world, device = distributed.is_rank_zero(), distributed.world_size(), distributed.device()
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    checkpoint_dir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else run_dir / "checkpoints"
    source = setup_run(run_dir, checkpoint_dir, cfg.resume.checkpoint, cfg.resume.allow_config_change, config)
    if rank_zero:
        print_config_tree(cfg)
    set_seed(cfg.seed)
    tokenizer = instantiate(cfg.tokenizer)
    data = setup_data(cfg.data, cfg.seed)

    grad_accum = resolve_grad_accum(cfg.train.global_batch_size, cfg.train.micro_batch_size, world, cfg.train.grad_accum)
    ds_config = deepspeed_config(
        zero=OmegaConf.to_container(cfg.zero, resolve=True), micro_batch_size=cfg.train.micro_batch_size,
        grad_accum=grad_accum, world_size=world, precision=cfg.train.precision,
        gradient_clipping=cfg.train.gradient_clipping, resumes_partitioned=holds_zero_partitions(source),
    )
    model, hf_deepspeed_config = setup_model(cfg, tokenizer, ds_config, run_dir)  # noqa: F841 (kept alive)

    template = ChatTemplate(system_prompt=cfg.data.system_prompt)
    train_loader, eval_loader, data_stats = setup_loaders(
        data, tokenizer, template, model.tokens_per_image, model.vision.image_processor, cfg.data.max_seq_len,
        cfg.train.micro_batch_size, cfg.eval.batch_size, cfg.data.group_by_length, cfg.model.pad_to_multiple_of,
        cfg.data.num_workers, cfg.seed, cfg.data.cache_dir, cfg.data.redraw_each_epoch,
        pin_memory=device.type == "cuda",  # page-locked batches: the copy to the GPU runs asynchronously
    )
    fingerprint = data_fingerprint(data.annotation_files, train_loader.dataset.conversations,
                                   eval_loader.dataset.conversations, template, tokenizer) if rank_zero else {}
    if rank_zero:
        (run_dir / "data_fingerprint.json").write_text(json.dumps(fingerprint, indent=2))
        if cfg.data.debug_dump:
            dump_samples(train_loader.dataset.conversations, template, tokenizer.eos_token, cfg.data.debug_dump, run_dir)

    max_steps = total_steps(cfg.train.max_steps, cfg.train.epochs, len(train_loader), grad_accum)
    engine, lr_scheduler = setup_engine(model, cfg.optim, max_steps, ds_config)
    state, resumed = restore(engine, source, cfg.resume.trust_checkpoint)
    if rank_zero:  # the manifest's derived values: world size, DeepSpeed JSON, parameters, data
        manifest.record_setup(run_dir, config=config, engine=engine, ds_config=ds_config, world_size=world,
                              grad_accum=grad_accum, parameter_counts=count_parameters(model),
                              tokens_per_image=model.tokens_per_image, data_fingerprint=fingerprint)
    if resumed and rank_zero and resumed.get("data_sha256") != fingerprint.get("sha256"):
        log.warning("the data differ from the checkpoint's (fingerprint %s, now %s): the resumed run sees other data",
                    resumed.get("data_sha256"), fingerprint.get("sha256"))

    # the same tracker runs when continuing this run directory; new ones for a fork into another
    same_run = source is not None and source.resolve().parent == checkpoint_dir.resolve()
    kept_runs = (resumed.get("tracker_runs") or {"wandb": resumed.get("wandb_run_id")}) if same_run else {}
    kept_runs = {name: run_id for name, run_id in kept_runs.items() if run_id}
    wandb_run_id = kept_runs.setdefault("wandb", uuid.uuid4().hex[:8])
    logger = MetricsLogger(run_dir, logger_settings=config["logger"], config=config, enabled=rank_zero,
                           run_ids=kept_runs, resume_step=state.step if source is not None else None)
    eval_set = eval_loader.dataset
    eval_conversations = eval_set.conversations[: cfg.eval.max_conversations]
    synced_gpus = int(cfg.zero.stage) == 3 and world > 1

    def evaluate(step: int) -> dict:
        metrics = {"eval/loss": evaluate_loss(engine, eval_loader, device, cfg.eval.max_batches)}
        if cfg.eval.generation and eval_conversations:
            accuracy, examples = evaluate_answers(
                engine.module, eval_conversations, tokenizer, template, eval_set.pixel_values, device,
                batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens, synced_gpus=synced_gpus,
            )
            metrics["eval/accuracy"] = accuracy
            if rank_zero and examples:
                log.info("step %d eval examples: %s", step, examples[:3])
        return metrics

    if source is None:
        logger.log(data_stats, step=0)
        if cfg.eval.at_start:
            logger.log(evaluate(0), step=0)
    run_facts = {"data_sha256": fingerprint.get("sha256"), "wandb_run_id": wandb_run_id,
                 "tracker_runs": {**kept_runs, **logger.run_ids}, "monitor": cfg.eval.monitor,
                 "monitor_mode": monitor_mode(cfg.eval.monitor), "world_size": world}
    save = make_saver(engine, checkpoint_dir, state, run_facts, OmegaConf.to_yaml(OmegaConf.create(config)),
                      cfg.checkpoint.keep_last)
    peak = device_peak(device, cfg.train.precision)
    if rank_zero:
        log.info("MFU is against a peak of %.4g TFLOP/s per device (%s)", peak.flops_per_s / 1e12, peak.source)
    stop_request = StopRequest().install()
    try:
        finished = train_loop(
            engine, lr_scheduler, BatchStream(train_loader, state.epoch, state.position), state, device, logger,
            evaluate, save, stop_request,
            max_steps=max_steps, grad_accum=grad_accum, tokens_per_image=model.tokens_per_image,
            log_every_n_steps=cfg.train.log_every_n_steps, eval_every_n_steps=cfg.eval.every_n_steps,
            eval_every_n_epochs=cfg.eval.every_n_epochs, checkpoint_every_n_steps=cfg.checkpoint.every_n_steps,
            monitor=cfg.eval.monitor, on_nonfinite=NonFiniteAction(cfg.train.on_nonfinite),
            show_progress=cfg.train.progress_bar and rank_zero, flop_counts=flop_counts(model), peak=peak,
        )
    finally:
        stop_request.restore()

    # ---- save & cleanup ------------------------------------------------------------------------
    summary = {**state.last_train, **state.last_eval, "steps": state.step}
    if finished and cfg.checkpoint.export:
        save_exports(engine, tokenizer, run_dir, checkpoint_dir, state.step, summary)
    logger.summary(summary)
    logger.close()
    write_rank_footprint(run_dir, engine, distributed.rank(), world)
    if rank_zero:
        print_summary(run_dir, summary)
        manifest.record_end(run_dir, summary, cfg.eval.monitor, status="completed" if finished else "stopped")
        if not finished:
            print(f"stopped by {stop_request.signal_name or 'a signal on another rank'} after step {state.step}; "
                  f"checkpoint {checkpoint_dir / checkpoints.tag_for(state.step)}. Resume with the same command plus "
                  f"hydra.run.dir={run_dir} resume=auto", flush=True)
    value = summary.get(cfg.eval.monitor)
    return float(value) if value is not None else math.nan

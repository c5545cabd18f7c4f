"""One training run on this rank: the `Recipe` object, in phases (torchtune's recipe shape):

    setup -> train -> save_checkpoint (on the loop's schedule) -> save_exports -> cleanup (always)

`setup` runs, in order: the run directory (fresh or resumed), the data, the model, the loaders,
the engine, the trackers; each part is kept on the object, so `train` reads short. The recipe's
methods read the config, and so do the helpers that each read one group of it: `model_setup.py`
(the model groups), `data_setup.setup_data` (data) and `setup_engine` (optim). Every other
function, the loaders and the training loop take flat values. `cleanup` runs whatever ended the
run (`finally`): trackers closed, the ending (completed / stopped / failed, with its reason) in
the manifest, the process group torn down (repro/run_end.py).

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
from transformers import set_seed

from dsvl_exp.config.choices import NonFiniteAction
from dsvl_exp.config.legacy_keys import upgrade
from dsvl_exp.data.debug_dump import dump_samples
from dsvl_exp.data.fingerprint import data_fingerprint
from dsvl_exp.data.template import ChatTemplate
from dsvl_exp.models.flops import flop_counts
from dsvl_exp.errors import ConfigError
from dsvl_exp.models.freezing import count_parameters
from dsvl_exp.metric_direction import direction_for
from dsvl_exp.repro import manifest
from dsvl_exp.repro.run_end import RunEnding, end_run
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
from dsvl_exp.training.data_setup import LoaderSettings, setup_data, setup_loaders
from dsvl_exp.training.evaluation import evaluate_answers, evaluate_loss
from dsvl_exp.training.footprint import write_rank_footprint
from dsvl_exp.training.interrupt import StopRequest
from dsvl_exp.training.logging import MetricsLogger
from dsvl_exp.training.loop import BatchStream, LoopSettings, LoopState, TrainingLoop
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
            # a checkpoint written before keys were renamed is compared in today's names
            saved = upgrade(OmegaConf.to_container(OmegaConf.load(source / checkpoints.CONFIG), resolve=True))
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
    state = LoopState.from_dict(rank_state["loop"])
    state.best_value, state.best_step = trainer_state["best_value"], trainer_state["best_step"]
    checkpoints.set_rng_state(rank_state["rng"])  # last: nothing may draw between here and the loop
    return state, trainer_state


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


def tracker_runs_to_continue(trainer_state: dict, same_run: bool) -> dict[str, str]:
    """The tracker runs a resumed run continues: its own when continuing this run directory,
    none (new ones) for a fork into another."""
    if not same_run:
        return {}
    kept = trainer_state.get("tracker_runs") or {"wandb": trainer_state.get("wandb_run_id")}
    return {name: run_id for name, run_id in kept.items() if run_id}


# ---- the run -----------------------------------------------------------------------------------
class Recipe:
    """One run on this rank. `run()` is the whole of it; the phases are its methods."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        self.checkpoint_dir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else self.run_dir / "checkpoints"
        self.owns_process_group = False  # torchrun's followers share a group that outlives this run
        self.stop_request = StopRequest()
        self.state = LoopState()
        self.logger: MetricsLogger | None = None
        self.summary: dict = {}

    def run(self) -> float:
        """setup -> train -> save_exports, then cleanup whatever happened; the monitored metric."""
        ending = None
        try:
            self.setup()
            finished = self.train()
            self.summary = {**self.state.last_train, **self.state.last_eval, "steps": self.state.step}
            if finished and self.cfg.checkpoint.export:
                save_exports(self.engine, self.tokenizer, self.run_dir, self.checkpoint_dir, self.state.step,
                             self.summary)
            ending = self.ending(finished)
        except BaseException as error:
            ending = RunEnding.of_error(error)
            raise
        finally:
            self.cleanup(ending)
        value = self.summary.get(self.cfg.eval.monitor)
        return float(value) if value is not None else math.nan

    # ---- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        self.owns_process_group = not torch.distributed.is_initialized()
        distributed.init_process_group()
        self.rank_zero, self.world, self.device = distributed.is_rank_zero(), distributed.world_size(), distributed.device()
        self.source = setup_run(self.run_dir, self.checkpoint_dir, cfg.resume.checkpoint, cfg.resume.allow_config_change,
                                self.config)
        if self.rank_zero:
            print_config_tree(cfg)
        set_seed(cfg.seed)
        self.tokenizer = instantiate(cfg.tokenizer)
        data = self.setup_data()
        self.grad_accum = resolve_grad_accum(cfg.train.global_batch_size, cfg.train.micro_batch_size, self.world,
                                             cfg.train.grad_accum)
        self.ds_config = deepspeed_config(
            zero=OmegaConf.to_container(cfg.zero, resolve=True), micro_batch_size=cfg.train.micro_batch_size,
            grad_accum=self.grad_accum, world_size=self.world, precision=cfg.train.precision,
            gradient_clipping=cfg.train.gradient_clipping, resumes_partitioned=holds_zero_partitions(self.source),
        )
        self.setup_model()
        self.setup_loaders(data)
        self.max_steps = total_steps(cfg.train.max_steps, cfg.train.epochs, len(self.train_loader), self.grad_accum)
        self.engine, self.lr_scheduler = setup_engine(self.model, cfg.optim, self.max_steps, self.ds_config)
        self.state, resumed = restore(self.engine, self.source, cfg.resume.trust_checkpoint)
        self.record_setup(resumed)
        self.setup_logging(resumed)

    def setup_data(self):
        """Read every dataset and check its records and images (before any model exists)."""
        return setup_data(self.cfg.data, self.cfg.seed)

    def setup_model(self) -> None:
        # ZeRO-3: built partitioned; the HfDeepSpeedConfig must outlive the model's use (kept on self)
        with model_construction(self.ds_config) as self.hf_deepspeed_config:
            self.model = build_model(self.cfg, self.tokenizer)
        configure_training(self.model, self.cfg)
        parameter_counts = count_parameters(self.model)
        if self.rank_zero:
            print_parameter_table(parameter_counts)
            (self.run_dir / "parameters.json").write_text(json.dumps(parameter_counts, indent=2))

    def setup_loaders(self, data) -> None:
        cfg = self.cfg
        self.template = ChatTemplate(system_prompt=cfg.data.system_prompt)
        settings = LoaderSettings(
            max_seq_len=cfg.data.max_seq_len, micro_batch_size=cfg.train.micro_batch_size,
            eval_batch_size=cfg.eval.batch_size, group_by_length=cfg.data.group_by_length,
            pad_to_multiple_of=cfg.model.pad_to_multiple_of, num_workers=cfg.data.num_workers, seed=cfg.seed,
            cache_dir=cfg.data.cache_dir, redraw_each_epoch=cfg.data.redraw_each_epoch,
            pin_memory=self.device.type == "cuda",  # page-locked batches: the copy to the GPU runs asynchronously
        )
        self.train_loader, self.eval_loader, self.data_stats = setup_loaders(
            data, self.tokenizer, self.template, self.model.tokens_per_image, self.model.vision.image_processor, settings)
        train_conversations, eval_conversations = self.train_loader.dataset.conversations, self.eval_loader.dataset.conversations
        self.eval_conversations = eval_conversations[: cfg.eval.max_conversations]
        self.fingerprint = data_fingerprint(data.annotation_files, train_conversations, eval_conversations, self.template,
                                            self.tokenizer) if self.rank_zero else {}
        if self.rank_zero:
            (self.run_dir / "data_fingerprint.json").write_text(json.dumps(self.fingerprint, indent=2))
            if cfg.data.debug_dump:
                dump_samples(train_conversations, self.template, self.tokenizer.eos_token, cfg.data.debug_dump, self.run_dir)

    def record_setup(self, resumed: dict) -> None:
        """The manifest's derived values: world size, DeepSpeed JSON, parameters, data (rank 0)."""
        if not self.rank_zero:
            return
        manifest.record_setup(self.run_dir, config=self.config, engine=self.engine, ds_config=self.ds_config,
                              world_size=self.world, grad_accum=self.grad_accum,
                              parameter_counts=count_parameters(self.model), tokens_per_image=self.model.tokens_per_image,
                              data_fingerprint=self.fingerprint)
        if resumed and resumed.get("data_sha256") != self.fingerprint.get("sha256"):
            log.warning("the data differ from the checkpoint's (fingerprint %s, now %s): the resumed run sees other data",
                        resumed.get("data_sha256"), self.fingerprint.get("sha256"))

    def setup_logging(self, resumed: dict) -> None:
        """The trackers (continuing this run directory's own runs) and what every checkpoint keeps."""
        same_run = self.source is not None and self.source.resolve().parent == self.checkpoint_dir.resolve()
        kept_runs = tracker_runs_to_continue(resumed, same_run)
        wandb_run_id = kept_runs.setdefault("wandb", uuid.uuid4().hex[:8])
        self.logger = MetricsLogger(self.run_dir, logger_settings=self.config["logger"], config=self.config,
                                    enabled=self.rank_zero, run_ids=kept_runs,
                                    resume_step=self.state.step if self.source is not None else None)
        monitor = self.cfg.eval.monitor
        self.run_facts = {"data_sha256": self.fingerprint.get("sha256"), "wandb_run_id": wandb_run_id,
                          "tracker_runs": {**kept_runs, **self.logger.run_ids}, "monitor": monitor,
                          "monitor_direction": direction_for(monitor), "world_size": self.world}

    # ---- train ---------------------------------------------------------------------------------
    def train(self) -> bool:
        """The loop from the restored step to the last; False when a stop signal ended it early."""
        cfg = self.cfg
        if self.source is None:
            self.logger.log(self.data_stats, step=0)
            if cfg.eval.at_start:
                self.logger.log(self.evaluate(0), step=0)
        peak = device_peak(self.device, cfg.train.precision)
        if self.rank_zero:
            log.info("MFU is against a peak of %.4g TFLOP/s per device (%s)", peak.flops_per_s / 1e12, peak.source)
        settings = LoopSettings(
            max_steps=self.max_steps, grad_accum=self.grad_accum, tokens_per_image=self.model.tokens_per_image,
            log_every_n_steps=cfg.train.log_every_n_steps, eval_every_n_steps=cfg.eval.every_n_steps,
            eval_every_n_epochs=cfg.eval.every_n_epochs, checkpoint_every_n_steps=cfg.checkpoint.every_n_steps,
            monitor=cfg.eval.monitor, on_nonfinite=NonFiniteAction(cfg.train.on_nonfinite),
            show_progress=cfg.train.progress_bar and self.rank_zero,
        )
        batches = BatchStream(self.train_loader, self.state.epoch, self.state.batches_into_epoch)
        loop = TrainingLoop(self.engine, self.lr_scheduler, batches, self.state, self.logger, self.evaluate,
                            self.save_checkpoint, self.stop_request.install(), settings, self.device,
                            flop_counts=flop_counts(self.model), peak=peak)
        try:
            return loop.run()
        finally:
            self.stop_request.restore()

    def evaluate(self, step: int) -> dict:
        eval_cfg = self.cfg.eval
        metrics = {"eval/loss": evaluate_loss(self.engine, self.eval_loader, self.device, eval_cfg.max_batches)}
        if eval_cfg.generation and self.eval_conversations:
            accuracy, examples = evaluate_answers(
                self.engine.module, self.eval_conversations, self.tokenizer, self.template,
                self.eval_loader.dataset.pixel_values, self.device, batch_size=eval_cfg.batch_size,
                max_new_tokens=eval_cfg.max_new_tokens,
                synced_gpus=int(self.cfg.zero.stage) == 3 and self.world > 1,
            )
            metrics["eval/accuracy"] = accuracy
            if self.rank_zero and examples:
                log.info("step %d eval examples: %s", step, examples[:3])
        return metrics

    def save_checkpoint(self, step: int, is_best: bool) -> None:
        """A checkpoint of the engine and the loop; `best` moved to it when it is one."""
        engine, state, checkpoint_dir = self.engine, self.state, self.checkpoint_dir
        if not checkpoints.parameters_finite(engine):
            raise checkpoints.CheckpointError(
                f"the weights are not finite after step {step}; not saving over the last good checkpoint "
                f"({checkpoints.read_latest(checkpoint_dir)}). Lower optim.lr or check the data")
        trainer_state = {"step": step, "epoch": state.epoch, "batches_into_epoch": state.batches_into_epoch,
                         "best_value": state.best_value, "best_step": state.best_step,
                         "last_train": state.last_train, "last_eval": state.last_eval, **self.run_facts}
        rank_state = {"loop": state.to_dict(), "rng": checkpoints.rng_state()}
        started = time.perf_counter()
        config_yaml = OmegaConf.to_yaml(OmegaConf.create(self.config))
        folder = checkpoints.save_checkpoint(engine, checkpoint_dir, step, trainer_state, rank_state, config_yaml)
        if self.rank_zero:
            if is_best:
                checkpoints.publish_best(checkpoint_dir, folder.name)
            deleted = checkpoints.prune(checkpoint_dir, self.cfg.checkpoint.keep_last)
            log.info("checkpoint %s saved in %.2f s%s%s", folder, time.perf_counter() - started,
                     " (best so far)" if is_best else "", f"; deleted {', '.join(deleted)}" if deleted else "")
        distributed.barrier()

    # ---- the end -------------------------------------------------------------------------------
    def ending(self, finished: bool) -> RunEnding:
        if finished:
            return RunEnding("completed", f"trained to step {self.state.step}")
        stopped_by = self.stop_request.signal_name or "a signal on another rank"
        return RunEnding("stopped", f"stopped by {stopped_by} after step {self.state.step}; "
                                    f"checkpoint {self.checkpoint_dir / checkpoints.tag_for(self.state.step)}")

    def cleanup(self, ending: RunEnding) -> None:
        """Always runs: the footprint and summary of a run that trained, then `end_run` (trackers,
        manifest, process group), each part even when the one before it raised."""
        try:
            if ending.status in ("completed", "stopped"):
                if self.logger is not None:
                    self.logger.summary(self.summary)
                write_rank_footprint(self.run_dir, self.engine, distributed.rank(), self.world)
                if self.rank_zero:
                    print_summary(self.run_dir, self.summary)
                    if ending.status == "stopped":
                        print(f"{ending.reason}. Resume with the same command plus hydra.run.dir={self.run_dir} "
                              "resume=auto", flush=True)
        finally:
            end_run(self.run_dir, ending, record=distributed.is_rank_zero(), trackers=self.logger, summary=self.summary,
                    monitor=self.cfg.eval.monitor, keep_process_group=not self.owns_process_group)


def train(cfg: DictConfig, run_dir: Path) -> float:
    """One run on this rank (training/rank.py calls it); returns the monitored eval metric."""
    return Recipe(cfg, run_dir).run()

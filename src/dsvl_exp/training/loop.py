"""The training loop: forward, backward, step, log, evaluate, checkpoint. Read it top to bottom.

Everything a resumed run needs to continue as if it had never stopped lives in `LoopState`
(saved with every checkpoint): the step, where the data stream is inside its epoch, the partly
filled logging window and the best monitored value so far.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from torch.utils.data import Sampler
from tqdm.auto import tqdm

from dsvl_exp.config.schema import NonFiniteAction
from dsvl_exp.training import distributed
from dsvl_exp.training.evaluation import model_inputs, move_to
from dsvl_exp.training.interrupt import StopRequest
from dsvl_exp.training.logging import MetricsLogger

log = logging.getLogger(__name__)


class NonFiniteLossError(ValueError):
    pass


class ResumableSampler(Sampler[int]):
    """The epoch's sampler, minus its first `skip_batches` micro-batches: a resumed run starts
    mid-epoch without loading (or even reading) the samples it already trained on."""

    def __init__(self, sampler, batch_size: int):
        self.sampler = sampler
        self.batch_size = batch_size
        self.skip_batches = 0

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip_batches * self.batch_size, None)


class BatchStream:
    """Micro-batches across epochs. `epoch` and `position` (micro-batches of that epoch already
    taken) say where it is; a stream built with the same two values continues identically,
    because every epoch's order is a pure function of (seed, epoch)."""

    def __init__(self, loader, epoch: int = 0, position: int = 0):
        self.loader = loader
        self.sampler: ResumableSampler = loader.sampler
        self.batches_per_epoch = len(loader)
        self.epoch = epoch
        self.position = position
        self.iterator = None

    def start_epoch(self) -> None:
        self.sampler.set_epoch(self.epoch)
        dataset = self.loader.dataset
        if hasattr(dataset, "set_epoch"):  # per-epoch re-draws of the data itself
            dataset.set_epoch(self.epoch)
        self.sampler.skip_batches = self.position
        self.iterator = iter(self.loader)

    def next(self) -> dict:
        while True:
            if self.iterator is None:
                self.start_epoch()
            batch = next(self.iterator, None)
            if batch is not None:
                self.position += 1
                return batch
            self.iterator, self.epoch, self.position = None, self.epoch + 1, 0

    def epochs_done(self) -> int:
        return self.epoch + (self.position >= self.batches_per_epoch)


def monitor_mode(metric: str) -> str:
    """Accuracies are maximised, everything else (losses) minimised."""
    return "max" if "acc" in metric.rsplit("/", 1)[-1] else "min"


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    position: int = 0  # micro-batches of `epoch` already taken (this rank)
    window: dict = field(default_factory=dict)  # the logging window not yet written
    skipped_nonfinite: int = 0
    best_value: float | None = None
    best_step: int | None = None
    last_train: dict = field(default_factory=dict)
    last_eval: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def is_better(self, value: float, mode: str) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return self.best_value is None or (value < self.best_value if mode == "min" else value > self.best_value)


def new_window(first_step: int) -> dict:
    return {"loss": 0.0, "micro_batches": 0, "tokens": 0, "samples": 0, "first_step": first_step}


def train_loop(
    engine,
    lr_scheduler,
    batches: BatchStream,
    state: LoopState,
    device,
    logger: MetricsLogger,
    evaluate: Callable[[int], dict],
    save: Callable[[int, bool], None],
    stop_request: StopRequest,
    max_steps: int,
    grad_accum: int,
    tokens_per_image: int,
    log_every_n_steps: int,
    eval_every_n_steps: int | None,
    eval_every_n_epochs: int | None,
    checkpoint_every_n_steps: int | None,
    monitor: str,
    on_nonfinite: NonFiniteAction,
    show_progress: bool,
) -> bool:
    """Runs optimizer steps (each `grad_accum` micro-batches) from `state.step` to `max_steps`,
    evaluating and checkpointing on schedule. `save(step, is_best)` writes a checkpoint of the
    engine and `state`. Returns False when a stop signal ended the run early (after saving)."""
    engine.train()
    mode = monitor_mode(monitor)
    # disable=None: a bar on a terminal, nothing in a redirected log (metrics.jsonl has the numbers)
    progress = tqdm(total=max_steps, initial=state.step, desc="train", disable=None if show_progress else True,
                    dynamic_ncols=True)
    window = state.window or new_window(state.step + 1)
    window_start = time.perf_counter()
    epochs_done = batches.epochs_done()
    while state.step < max_steps:
        accumulated, skipped_in_a_row = 0, 0
        while accumulated < grad_accum:
            batch = batches.next()
            sample_ids = batch.get("sample_ids")
            batch = move_to(model_inputs(batch), device)
            output = engine(**batch)
            loss = float(output.loss.detach())
            if not all_finite(loss):
                message = (f"non-finite loss ({loss}) at step {state.step + 1} (micro-batch {accumulated + 1}/{grad_accum}, "
                           f"epoch {batches.epoch}); sample ids: {sample_ids}")
                if on_nonfinite == NonFiniteAction.stop:
                    raise NonFiniteLossError(
                        f"{message}. The run stops here and nothing after the last checkpoint is saved; "
                        "lower optim.lr, check these samples, or set train.on_nonfinite=skip")
                state.skipped_nonfinite += 1
                skipped_in_a_row += 1
                log.warning("%s: skipped (train.on_nonfinite=skip; %d so far)", message, state.skipped_nonfinite)
                if skipped_in_a_row >= batches.batches_per_epoch:
                    raise NonFiniteLossError(f"{message}. {skipped_in_a_row} micro-batches in a row (an epoch's worth) "
                                             "had a non-finite loss: the model itself is broken; lower optim.lr")
                continue  # no backward: nothing of this batch reaches the weights
            engine.backward(output.loss)
            engine.step()  # DeepSpeed applies the update (and the schedule) on the accumulation boundary
            accumulated += 1
            window["loss"] += loss
            window["micro_batches"] += 1
            window["samples"] += batch["input_ids"].shape[0]
            window["tokens"] += int(batch["attention_mask"].sum()) + (tokens_per_image - 1) * sum(batch["image_num"])
        state.step += 1
        step = state.step
        state.epoch, state.position = batches.epoch, batches.position
        progress.update(1)

        if step % log_every_n_steps == 0 or step == max_steps:
            elapsed = time.perf_counter() - window_start
            grad_norm = engine.get_global_grad_norm()
            # every rank's micro-batches, not only rank 0's (all ranks log at the same steps)
            loss_sum, micro_batches, tokens, samples = distributed.all_reduce_sum(
                [window["loss"], window["micro_batches"], window["tokens"], window["samples"]]
            )
            state.last_train = {
                "train/loss": loss_sum / micro_batches,
                "train/lr": lr_scheduler.get_last_lr()[0],
                "train/grad_norm": float(grad_norm) if grad_norm is not None else None,
                "train/epoch": batches.epoch,
                "perf/tokens_per_s": tokens / elapsed,
                "perf/samples_per_s": samples / elapsed,
                "perf/step_time_s": elapsed / (step - window["first_step"] + 1),
            }
            if state.skipped_nonfinite:
                state.last_train["train/skipped_nonfinite"] = state.skipped_nonfinite
            logger.log(state.last_train, step=step)
            progress.set_postfix(loss=f"{state.last_train['train/loss']:.4f}", lr=f"{state.last_train['train/lr']:.2e}")
            window, window_start = new_window(step + 1), time.perf_counter()
        state.window = window

        stopping = stop_request.agreed()  # all ranks stop at the same step
        finished_epochs = batches.epochs_done()
        epoch_ended = finished_epochs > epochs_done
        epochs_done = finished_epochs
        is_best = False
        if (step == max_steps or (eval_every_n_steps and step % eval_every_n_steps == 0)
                or (eval_every_n_epochs and epoch_ended and finished_epochs % eval_every_n_epochs == 0)):
            state.last_eval = evaluate(step)
            logger.log(state.last_eval, step=step)
            value = {**state.last_train, **state.last_eval}.get(monitor)
            if state.is_better(value, mode):
                state.best_value, state.best_step, is_best = value, step, True
        if (is_best or stopping or step == max_steps
                or (checkpoint_every_n_steps and step % checkpoint_every_n_steps == 0)):
            save(step, is_best)
        if stopping and step < max_steps:
            progress.close()
            return False
    progress.close()
    return True


def all_finite(loss: float) -> bool:
    """One rank's non-finite loss stops (or skips on) every rank: they must stay in step."""
    bad = 0.0 if math.isfinite(loss) else 1.0
    if distributed.world_size() > 1:
        bad = distributed.all_reduce_sum([bad])[0]
    return bad == 0.0

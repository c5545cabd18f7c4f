"""The training loop: forward, backward, step, log, evaluate, checkpoint. Read it top to bottom.

Host syncs: the losses and counts of a step stay on the device; the host reads them once per
optimizer step, together with the ranks' agreement on non-finite losses and on stopping (one
small collective). Only `train.on_nonfinite=skip` reads each micro-batch's loss before its
backward, because it must decide whether to run it.

Everything a resumed run needs to continue as if it had never stopped lives in `LoopState`
(saved with every checkpoint): the step, where the data stream is inside its epoch, the partly
filled logging window and the best monitored value so far.

`TrainingLoop.run` is the loop; `optimizer_step`, `micro_batch`, `log_window` and
`evaluate_and_save` are its parts, in the order they run.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch.utils.data import Sampler
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dsvl_exp import collectives
from dsvl_exp.config.choices import NonFiniteAction
from dsvl_exp.errors import UserError
from dsvl_exp.metric_direction import direction_for, improves_on
from dsvl_exp.training import distributed
from dsvl_exp.training.evaluation import model_inputs, move_to
from dsvl_exp.training.interrupt import StopRequest
from dsvl_exp.training.logging import MetricsLogger
from dsvl_exp.training.throughput import DevicePeak, FlopTally, StepTimer, performance_metrics

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError, ValueError):
    """A NaN/inf loss under train.on_nonfinite=stop (or an epoch of them under skip)."""


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
    """Micro-batches across epochs. `epoch` and `batches_into_epoch` (micro-batches of that epoch
    already taken) say where it is; a stream built with the same two values continues identically,
    because every epoch's order is a pure function of (seed, epoch)."""

    def __init__(self, loader, epoch: int = 0, batches_into_epoch: int = 0):
        self.loader = loader
        self.sampler: ResumableSampler = loader.sampler
        self.batches_per_epoch = len(loader)
        self.epoch = epoch
        self.batches_into_epoch = batches_into_epoch
        self.iterator = None

    def start_epoch(self) -> None:
        self.sampler.set_epoch(self.epoch)
        dataset = self.loader.dataset
        if hasattr(dataset, "set_epoch"):  # per-epoch re-draws of the data itself
            dataset.set_epoch(self.epoch)
        self.sampler.skip_batches = self.batches_into_epoch
        self.iterator = iter(self.loader)

    def next_batch(self) -> dict:
        while True:
            if self.iterator is None:
                self.start_epoch()
            batch = next(self.iterator, None)
            if batch is not None:
                self.batches_into_epoch += 1
                return batch
            self.iterator, self.epoch, self.batches_into_epoch = None, self.epoch + 1, 0

    def epochs_done(self) -> int:
        return self.epoch + (self.batches_into_epoch >= self.batches_per_epoch)


# checkpoints written before the fields got the names that say what they hold
RENAMED_STATE_FIELDS = {"position": "batches_into_epoch", "window": "unlogged_window"}


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    batches_into_epoch: int = 0  # micro-batches of `epoch` already taken (this rank)
    unlogged_window: dict = field(default_factory=dict)  # sums of the logging window not yet written
    skipped_nonfinite: int = 0
    best_value: float | None = None
    best_step: int | None = None
    last_train: dict = field(default_factory=dict)
    last_eval: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "LoopState":
        return cls(**{RENAMED_STATE_FIELDS.get(key, key): value for key, value in saved.items()})

    def is_better(self, value: float | None, direction: str) -> bool:
        return improves_on(value, self.best_value, direction)


def new_window(first_step: int) -> dict:
    return {"loss": 0.0, "micro_batches": 0, "tokens": 0, "samples": 0, "first_step": first_step}


class StepAccumulator:
    """The logging window's running sums, kept on the device between host reads. The loss sum
    is float64, added micro-batch by micro-batch in order: the logged mean is bit for bit what
    summing Python floats gave."""

    def __init__(self, window: dict, device):
        self.device = torch.device(device)
        self.loss = torch.tensor(window["loss"], dtype=torch.float64, device=self.device)
        self.mask_tokens = torch.zeros((), dtype=torch.int64, device=self.device)

    def add(self, loss: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.loss += loss.double()
        self.mask_tokens += attention_mask.sum()

    def read(self, window: dict, step_losses: list[torch.Tensor], stop_requested: bool) -> tuple[int, bool]:
        """The step's one host read: folds the sums into `window`; returns (non-finite micro-batch
        losses on all ranks, whether any rank was asked to stop)."""
        flags = torch.stack([(~torch.isfinite(torch.stack(step_losses))).sum().double(),
                             torch.tensor(float(stop_requested), dtype=torch.float64, device=self.device)])
        collectives.all_reduce_(flags)  # on the device: nccl on a GPU, gloo on CPU
        bad, stop, loss_sum, mask_tokens = torch.cat([flags, self.loss.view(1), self.mask_tokens.double().view(1)]).tolist()
        window["loss"], window["tokens"] = loss_sum, window["tokens"] + int(mask_tokens)
        self.mask_tokens.zero_()
        return int(bad), stop > 0


def nonfinite_message(step: int, grad_accum: int, step_losses: list[torch.Tensor], step_batches: list[tuple]) -> str:
    """Names the first non-finite micro-batch of this rank (read only on this error path)."""
    values = torch.stack(step_losses).tolist()
    for index, value in enumerate(values):
        if not math.isfinite(value):
            sample_ids, epoch = step_batches[index]
            return (f"non-finite loss ({value}) at step {step} (micro-batch {index + 1}/{grad_accum}, epoch {epoch}); "
                    f"sample ids: {sample_ids}")
    return f"non-finite loss at step {step} on another rank"


@dataclass
class LoopSettings:
    """The loop's schedule, as flat values (the recipe reads them from the config)."""
    max_steps: int
    grad_accum: int
    tokens_per_image: int
    log_every_n_steps: int
    eval_every_n_steps: int | None
    eval_every_n_epochs: int | None
    checkpoint_every_n_steps: int | None
    monitor: str
    on_nonfinite: NonFiniteAction
    show_progress: bool = False


class TrainingLoop:
    """Runs optimizer steps (each `grad_accum` micro-batches) from `state.step` to `max_steps`,
    evaluating and checkpointing on schedule. `evaluate(step)` returns eval metrics;
    `save(step, is_best)` writes a checkpoint of the engine and `state`. `flop_counts` / `peak`:
    the model's FLOP counts and the device's peak, for MFU."""

    def __init__(self, engine, lr_scheduler, batches: BatchStream, state: LoopState, logger: MetricsLogger,
                 evaluate: Callable[[int], dict], save: Callable[[int, bool], None], stop_request: StopRequest,
                 settings: LoopSettings, device="cpu", flop_counts=None, peak: DevicePeak | None = None):
        self.engine, self.lr_scheduler, self.batches, self.state = engine, lr_scheduler, batches, state
        self.logger, self.evaluate, self.save, self.stop_request = logger, evaluate, save, stop_request
        self.settings, self.device, self.peak = settings, torch.device(device), peak
        self.direction = direction_for(settings.monitor)
        self.window = state.unlogged_window or new_window(state.step + 1)
        self.sums, self.timer = StepAccumulator(self.window, self.device), StepTimer(self.device)
        self.flops = FlopTally(flop_counts)
        self.first_step, self.epochs_done = state.step, batches.epochs_done()
        self.window_start = self.loop_start = 0.0  # set when the loop starts
        self.progress = None

    def run(self) -> bool:
        """Trains to `max_steps`; False when a stop signal ended the run early (after saving)."""
        self.engine.train()
        max_steps = self.settings.max_steps
        # disable=None: a bar on a terminal, nothing in a redirected log (the log lines carry step/total and eta)
        self.progress = tqdm(total=max_steps, initial=self.state.step, desc="train", dynamic_ncols=True,
                             disable=None if self.settings.show_progress else True)
        self.window_start = self.loop_start = time.perf_counter()
        try:
            with logging_redirect_tqdm():  # log lines go above the bar, not glued onto it
                while self.state.step < max_steps:
                    stopping = self.optimizer_step()
                    step = self.state.step
                    if step % self.settings.log_every_n_steps == 0 or step == max_steps:
                        self.log_window(step)
                    self.state.unlogged_window = self.window
                    self.evaluate_and_save(step, stopping)
                    if stopping and step < max_steps:
                        return False
        finally:
            self.progress.close()
        return True

    def optimizer_step(self) -> bool:
        """`grad_accum` micro-batches and the update; returns whether any rank was asked to stop."""
        grad_accum = self.settings.grad_accum
        step_losses, step_batches, skipped_in_a_row = [], [], 0
        while len(step_losses) < grad_accum:
            skipped_in_a_row = self.micro_batch(step_losses, step_batches, skipped_in_a_row)
        bad, stopping = self.sums.read(self.window, step_losses, self.stop_request.signal_name is not None)
        if bad:  # train.on_nonfinite=stop (skip never keeps one): the update below never happens
            raise NonFiniteLossError(
                f"{nonfinite_message(self.state.step + 1, grad_accum, step_losses, step_batches)}. The run stops here "
                "and nothing after the last checkpoint is saved; lower optim.lr, check these samples, or set "
                "train.on_nonfinite=skip")
        with self.timer.phase("optimizer"):
            self.engine.step()  # the boundary: DeepSpeed applies the update (and the schedule)
        self.state.step += 1
        self.state.epoch, self.state.batches_into_epoch = self.batches.epoch, self.batches.batches_into_epoch
        self.progress.update(1)
        return stopping

    def micro_batch(self, step_losses: list, step_batches: list, skipped_in_a_row: int) -> int:
        """Forward and backward of one micro-batch (none under skip when its loss is not finite);
        returns the run of skipped micro-batches."""
        with self.timer.phase("data", on_device=False):
            batch = self.batches.next_batch()
        step_batches.append((batch.get("sample_ids"), self.batches.epoch))
        batch = move_to(model_inputs(batch), self.device)
        with self.timer.phase("forward_backward"):
            output = self.engine(**batch)
            loss = output.loss.detach()
            if self.settings.on_nonfinite == NonFiniteAction.skip and not all_finite(float(loss)):
                # no backward: nothing of this batch reaches the weights
                return skip_nonfinite(self.state, float(loss), step_batches.pop(), len(step_losses),
                                      self.settings.grad_accum, skipped_in_a_row, self.batches.batches_per_epoch)
            self.engine.backward(output.loss)
        step_losses.append(loss)
        self.sums.add(loss, batch["attention_mask"])
        count_batch(self.window, self.flops, batch, self.settings.tokens_per_image,
                    getattr(output, "num_supervised_tokens", 0))
        if len(step_losses) < self.settings.grad_accum:
            with self.timer.phase("optimizer"):
                self.engine.step()  # not the accumulation boundary: DeepSpeed only counts it
        return skipped_in_a_row

    def log_window(self, step: int) -> None:
        """The train/* and perf/* numbers of the window that ends at `step`; a new window starts."""
        max_steps = self.settings.max_steps
        elapsed = time.perf_counter() - self.window_start
        remaining_s = (max_steps - step) * (time.perf_counter() - self.loop_start) / (step - self.first_step)
        state = self.state
        state.last_train = window_metrics(self.engine, self.lr_scheduler, self.window, step, elapsed, self.batches.epoch,
                                          self.timer, self.flops, self.peak, self.device, max_steps, remaining_s)
        if state.skipped_nonfinite:
            state.last_train["train/skipped_nonfinite"] = state.skipped_nonfinite
        self.logger.log(state.last_train, step=step)
        self.progress.set_postfix(loss=f"{state.last_train['train/loss']:.4f}", lr=f"{state.last_train['train/lr']:.2e}")
        self.window, self.window_start = new_window(step + 1), time.perf_counter()
        self.sums = StepAccumulator(self.window, self.device)

    def evaluate_and_save(self, step: int, stopping: bool) -> None:
        """Evaluation and the checkpoint on their schedules (and a checkpoint before stopping)."""
        settings, state = self.settings, self.state
        finished_epochs = self.batches.epochs_done()
        epoch_ended, self.epochs_done = finished_epochs > self.epochs_done, finished_epochs
        is_best, paused_at = False, time.perf_counter()
        if (step == settings.max_steps or (settings.eval_every_n_steps and step % settings.eval_every_n_steps == 0)
                or (settings.eval_every_n_epochs and epoch_ended and finished_epochs % settings.eval_every_n_epochs == 0)):
            state.last_eval = self.evaluate(step)
            self.logger.log(state.last_eval, step=step)
            value = {**state.last_train, **state.last_eval}.get(settings.monitor)
            if state.is_better(value, self.direction):
                state.best_value, state.best_step, is_best = value, step, True
        if (is_best or stopping or step == settings.max_steps
                or (settings.checkpoint_every_n_steps and step % settings.checkpoint_every_n_steps == 0)):
            self.save(step, is_best)
        self.window_start += time.perf_counter() - paused_at  # tokens/s and the step split count training only


def count_batch(window: dict, flops: FlopTally, batch: dict, tokens_per_image: int, supervised_tokens: int) -> None:
    """Host-side counts of a micro-batch (shapes and the per-sample image list: no device read)."""
    rows, text_length = batch["input_ids"].shape
    image_num = list(batch["image_num"])
    window["micro_batches"] += 1
    window["samples"] += rows
    window["tokens"] += (tokens_per_image - 1) * sum(image_num)  # the mask's tokens come from StepAccumulator
    flops.add(rows=rows, length=text_length + (tokens_per_image - 1) * max(image_num, default=0),
              image_tokens=tokens_per_image * sum(image_num), supervised_tokens=supervised_tokens)


def window_metrics(engine, lr_scheduler, window: dict, step: int, elapsed: float, epoch: int, timer: StepTimer,
                   flops: FlopTally, peak: DevicePeak | None, device, max_steps: int, remaining_s: float) -> dict:
    """The train/* and perf/* numbers of a logging window (every rank's micro-batches)."""
    grad_norm = engine.get_global_grad_norm()
    loss_sum, micro_batches, tokens, samples = distributed.all_reduce_sum(
        [window["loss"], window["micro_batches"], window["tokens"], window["samples"]])
    steps = step - window["first_step"] + 1
    return {
        "train/loss": loss_sum / micro_batches,
        "train/lr": lr_scheduler.get_last_lr()[0],
        "train/grad_norm": float(grad_norm) if grad_norm is not None else None,
        "train/epoch": epoch,
        "train/total_steps": max_steps,
        **performance_metrics(tokens, elapsed, steps, distributed.world_size(), flops.take(), peak, timer.read(), device),
        "perf/samples_per_s": samples / elapsed,
        "perf/eta_s": remaining_s,
    }


def skip_nonfinite(state: LoopState, loss: float, skipped: tuple, micro_batch: int, grad_accum: int,
                   skipped_in_a_row: int, batches_per_epoch: int) -> int:
    """train.on_nonfinite=skip: counts and logs the dropped micro-batch; returns the run of skips."""
    sample_ids, epoch = skipped
    message = (f"non-finite loss ({loss}) at step {state.step + 1} (micro-batch {micro_batch + 1}/{grad_accum}, "
               f"epoch {epoch}); sample ids: {sample_ids}")
    state.skipped_nonfinite += 1
    log.warning("%s: skipped (train.on_nonfinite=skip; %d so far)", message, state.skipped_nonfinite)
    if skipped_in_a_row + 1 >= batches_per_epoch:
        raise NonFiniteLossError(f"{message}. {skipped_in_a_row + 1} micro-batches in a row (an epoch's worth) "
                                 "had a non-finite loss: the model itself is broken; lower optim.lr")
    return skipped_in_a_row + 1


def all_finite(loss: float) -> bool:
    """One rank's non-finite loss skips on every rank: they must stay in step."""
    bad = 0.0 if math.isfinite(loss) else 1.0
    if distributed.world_size() > 1:
        bad = distributed.all_reduce_sum([bad])[0]
    return bad == 0.0

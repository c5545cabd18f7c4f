"""The training loop: forward, backward, step, log, evaluate, checkpoint. Read it top to bottom.

Host syncs: the losses and counts of a step stay on the device; the host reads them once per
optimizer step, together with the ranks' agreement on non-finite losses and on stopping (one
small collective). Only `train.on_nonfinite=skip` reads each micro-batch's loss before its
backward, because it must decide whether to run it.

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

import torch
from torch.utils.data import Sampler
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dsvl_exp import collectives
from dsvl_exp.config.choices import NonFiniteAction
from dsvl_exp.errors import UserError
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
    flop_counts=None,
    peak: DevicePeak | None = None,
) -> bool:
    """Runs optimizer steps (each `grad_accum` micro-batches) from `state.step` to `max_steps`,
    evaluating and checkpointing on schedule. `save(step, is_best)` writes a checkpoint of the
    engine and `state`. Returns False when a stop signal ended the run early (after saving).
    `flop_counts` / `peak`: the model's FLOP counts and the device's peak, for MFU."""
    engine.train()
    mode = monitor_mode(monitor)
    device = torch.device(device)
    # disable=None: a bar on a terminal, nothing in a redirected log (the log lines carry step/total and eta)
    progress = tqdm(total=max_steps, initial=state.step, desc="train", disable=None if show_progress else True,
                    dynamic_ncols=True)
    window = state.window or new_window(state.step + 1)
    sums, timer, flops = StepAccumulator(window, device), StepTimer(device), FlopTally(flop_counts)
    window_start = loop_start = time.perf_counter()
    first_step = state.step
    epochs_done = batches.epochs_done()
    with logging_redirect_tqdm():  # log lines go above the bar, not glued onto it
        while state.step < max_steps:
            step_losses, step_batches, skipped_in_a_row = [], [], 0
            while len(step_losses) < grad_accum:
                with timer.phase("data", on_device=False):
                    batch = batches.next()
                step_batches.append((batch.get("sample_ids"), batches.epoch))
                batch = move_to(model_inputs(batch), device)
                with timer.phase("forward_backward"):
                    output = engine(**batch)
                    loss = output.loss.detach()
                    if on_nonfinite == NonFiniteAction.skip and not all_finite(float(loss)):
                        skipped_in_a_row = skip_nonfinite(state, float(loss), step_batches.pop(), len(step_losses),
                                                          grad_accum, skipped_in_a_row, batches.batches_per_epoch)
                        continue  # no backward: nothing of this batch reaches the weights
                    engine.backward(output.loss)
                step_losses.append(loss)
                sums.add(loss, batch["attention_mask"])
                count_batch(window, flops, batch, tokens_per_image, getattr(output, "num_supervised_tokens", 0))
                if len(step_losses) < grad_accum:
                    with timer.phase("optimizer"):
                        engine.step()  # not the accumulation boundary: DeepSpeed only counts it
            bad, stopping = sums.read(window, step_losses, stop_request.signal_name is not None)
            if bad:  # train.on_nonfinite=stop (skip never keeps one): the update below never happens
                raise NonFiniteLossError(
                    f"{nonfinite_message(state.step + 1, grad_accum, step_losses, step_batches)}. The run stops here and "
                    "nothing after the last checkpoint is saved; lower optim.lr, check these samples, or set "
                    "train.on_nonfinite=skip")
            with timer.phase("optimizer"):
                engine.step()  # the boundary: DeepSpeed applies the update (and the schedule)
            state.step += 1
            step = state.step
            state.epoch, state.position = batches.epoch, batches.position
            progress.update(1)

            if step % log_every_n_steps == 0 or step == max_steps:
                elapsed = time.perf_counter() - window_start
                remaining_s = (max_steps - step) * (time.perf_counter() - loop_start) / (step - first_step)
                state.last_train = window_metrics(engine, lr_scheduler, window, step, elapsed, batches.epoch, timer,
                                                  flops, peak, device, max_steps, remaining_s)
                if state.skipped_nonfinite:
                    state.last_train["train/skipped_nonfinite"] = state.skipped_nonfinite
                logger.log(state.last_train, step=step)
                progress.set_postfix(loss=f"{state.last_train['train/loss']:.4f}", lr=f"{state.last_train['train/lr']:.2e}")
                window, window_start = new_window(step + 1), time.perf_counter()
                sums = StepAccumulator(window, device)
            state.window = window

            finished_epochs = batches.epochs_done()
            epoch_ended = finished_epochs > epochs_done
            epochs_done = finished_epochs
            is_best, paused_at = False, time.perf_counter()
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
            window_start += time.perf_counter() - paused_at  # tokens/s and the step split count training only
            if stopping and step < max_steps:
                progress.close()
                return False
    progress.close()
    return True


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

"""The training loop: forward, backward, step, log, evaluate. Read it top to bottom."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from tqdm.auto import tqdm

from dsvl_exp.training import distributed
from dsvl_exp.training.evaluation import move_to
from dsvl_exp.training.logging import MetricsLogger


def endless_batches(loader) -> Iterator[tuple[int, dict]]:
    """Batches across epochs, reshuffling each epoch (DistributedSampler.set_epoch)."""
    epoch = 0
    while True:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)  # data.redraw_each_epoch: this epoch's draw, a function of (seed, epoch)
        for batch in loader:
            yield epoch, batch
        epoch += 1


def new_window(first_step: int) -> dict:
    return {"loss": 0.0, "micro_batches": 0, "tokens": 0, "samples": 0, "first_step": first_step,
            "start": time.perf_counter()}


def train_loop(
    engine,
    lr_scheduler,
    train_loader,
    device,
    logger: MetricsLogger,
    evaluate: Callable[[int], dict],
    max_steps: int,
    grad_accum: int,
    tokens_per_image: int,
    log_every_n_steps: int,
    eval_every_n_steps: int | None,
    show_progress: bool,
) -> dict:
    """Runs `max_steps` optimizer steps (each `grad_accum` micro-batches); returns the last metrics."""
    engine.train()
    batches = endless_batches(train_loader)
    # disable=None: a bar on a terminal, nothing in a redirected log (metrics.jsonl has the numbers)
    progress = tqdm(total=max_steps, desc="train", disable=None if show_progress else True, dynamic_ncols=True)
    window = new_window(1)
    last: dict = {}
    step = 0
    while step < max_steps:
        for _ in range(grad_accum):
            epoch, batch = next(batches)
            batch = move_to(batch, device)
            output = engine(**batch)
            engine.backward(output.loss)
            engine.step()  # DeepSpeed applies the update (and the schedule) on the accumulation boundary
            window["loss"] += float(output.loss.detach())
            window["micro_batches"] += 1
            window["samples"] += batch["input_ids"].shape[0]
            window["tokens"] += int(batch["attention_mask"].sum()) + (tokens_per_image - 1) * sum(batch["image_num"])
        step += 1
        progress.update(1)

        if step % log_every_n_steps == 0 or step == max_steps:
            elapsed = time.perf_counter() - window["start"]
            grad_norm = engine.get_global_grad_norm()
            # every rank's micro-batches, not only rank 0's (all ranks log at the same steps)
            loss_sum, micro_batches, tokens, samples = distributed.all_reduce_sum(
                [window["loss"], window["micro_batches"], window["tokens"], window["samples"]]
            )
            last = {
                "train/loss": loss_sum / micro_batches,
                "train/lr": lr_scheduler.get_last_lr()[0],
                "train/grad_norm": float(grad_norm) if grad_norm is not None else None,
                "train/epoch": epoch,
                "perf/tokens_per_s": tokens / elapsed,
                "perf/samples_per_s": samples / elapsed,
                "perf/step_time_s": elapsed / (step - window["first_step"] + 1),
            }
            logger.log(last, step=step)
            progress.set_postfix(loss=f"{last['train/loss']:.4f}", lr=f"{last['train/lr']:.2e}")
            window = new_window(step + 1)

        if eval_every_n_steps and step % eval_every_n_steps == 0 and step != max_steps:
            logger.log(evaluate(step), step=step)
    progress.close()
    return last

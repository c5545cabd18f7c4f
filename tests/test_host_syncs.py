"""Host syncs of the training loop, counted on CPU.

On a GPU every read of a tensor's value on the host (`.item()`, `float(t)`, `int(t)`, `.tolist()`,
`bool(t)`) waits for the GPU's queue to drain. The loop reads once per optimizer step, whatever
`train.grad_accum` is; these tests count the reads by wrapping those methods of torch.Tensor.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from dsvl_exp.config.choices import NonFiniteAction
from dsvl_exp.training.interrupt import StopRequest
from dsvl_exp.training.loop import BatchStream, LoopSettings, LoopState, ResumableSampler, TrainingLoop

SYNCING = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy")


class TinyEngine:
    """A real module, loss and optimizer behind DeepSpeed's engine calls (no host read of its own:
    the model's internals are not what these tests count)."""

    def __init__(self):
        torch.manual_seed(0)
        self.module = torch.nn.Embedding(16, 4)
        self.optimizer = torch.optim.SGD(self.module.parameters(), lr=0.1)
        self.training = True

    def train(self):
        pass

    def __call__(self, input_ids, attention_mask, image_num, labels=None, images=None):
        loss = self.module(input_ids).pow(2).mean()
        return type("Output", (), {"loss": loss, "num_supervised_tokens": input_ids.numel()})()

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.optimizer.step()
        self.optimizer.zero_grad()

    def get_global_grad_norm(self):
        return 1.0


def collate(rows):
    ids = torch.tensor(rows).view(-1, 1).repeat(1, 3)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "image_num": [1] * len(rows),
            "sample_ids": [f"s{r}" for r in rows]}


class Logger:
    def __init__(self):
        self.records = []

    def log(self, metrics, step):
        self.records.append({"step": step, **metrics})


def count_syncs(monkeypatch, grad_accum: int, max_steps: int, log_every_n_steps: int,
                on_nonfinite=NonFiniteAction.stop, device: str = "cpu") -> tuple[int, list]:
    loader = DataLoader(list(range(16)), batch_size=2, sampler=ResumableSampler(list(range(16)), 2), collate_fn=collate)
    stream, logger = BatchStream(loader), Logger()
    stream.next_batch = counting_pauses(stream.next_batch)  # the loader's own tensor building is not the loop's
    scheduler = type("Schedule", (), {"get_last_lr": lambda self: [0.1]})()
    reads = []
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, _original=original, _name=name, **kwargs):
            if not stream.next_batch.inside:
                reads.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, wrapped)
    settings = LoopSettings(max_steps=max_steps, grad_accum=grad_accum, tokens_per_image=1,
                            log_every_n_steps=log_every_n_steps, eval_every_n_steps=None, eval_every_n_epochs=None,
                            checkpoint_every_n_steps=None, monitor="eval/loss", on_nonfinite=on_nonfinite)
    TrainingLoop(TinyEngine(), scheduler, stream, LoopState(), logger, lambda step: {}, lambda step, best: None,
                 StopRequest(), settings, device).run()
    monkeypatch.undo()
    return len(reads), [r for r in logger.records if "train/loss" in r]


def counting_pauses(next_batch):
    def wrapped():
        wrapped.inside = True
        try:
            return next_batch()
        finally:
            wrapped.inside = False
    wrapped.inside = False
    return wrapped


@pytest.mark.parametrize("grad_accum", [1, 2, 4])
def test_one_host_read_per_optimizer_step_whatever_the_accumulation(monkeypatch, grad_accum):
    # 6 steps, logged only at the last one (the final step is always logged)
    reads, records = count_syncs(monkeypatch, grad_accum, max_steps=6, log_every_n_steps=100)
    assert reads == 6  # before: 2 per micro-batch (float(loss), int(mask.sum())) + 1 per step (stop flag)
    assert [r["step"] for r in records] == [6] and math.isfinite(records[0]["train/loss"])


def test_a_log_step_reads_nothing_more_in_one_process(monkeypatch):
    reads, records = count_syncs(monkeypatch, 2, max_steps=6, log_every_n_steps=1)
    assert reads == 6 and [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[0]["perf/tokens_per_s"] > 0 and records[0]["train/total_steps"] == 6


def test_skip_mode_reads_each_loss_before_its_backward(monkeypatch):
    """train.on_nonfinite=skip must decide per micro-batch (documented cost: one read each)."""
    reads_1, _ = count_syncs(monkeypatch, 1, max_steps=4, log_every_n_steps=100, on_nonfinite=NonFiniteAction.skip)
    reads_2, _ = count_syncs(monkeypatch, 2, max_steps=4, log_every_n_steps=100, on_nonfinite=NonFiniteAction.skip)
    assert (reads_1, reads_2) == (4 + 4, 4 + 8)

"""The console while training: log lines above the progress bar (never glued onto it), and a
piped console's lines carrying step/total and the time left."""

from __future__ import annotations

import logging
import sys

import torch
from torch.utils.data import DataLoader

from dsvl_exp.config.choices import NonFiniteAction
from dsvl_exp.training.interrupt import StopRequest
from dsvl_exp.training.logging import duration, progress_line
from dsvl_exp.training.loop import BatchStream, LoopSettings, LoopState, ResumableSampler, TrainingLoop
from test_host_syncs import Logger, TinyEngine, collate


def test_log_lines_go_through_the_progress_bar_while_the_loop_runs():
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)
    root.addHandler(console)
    seen = []

    class HandlerRecordingLogger(Logger):
        def log(self, metrics, step):
            seen.append([type(h).__name__ for h in root.handlers])
            super().log(metrics, step)
    try:
        loader = DataLoader(list(range(8)), batch_size=2, sampler=ResumableSampler(list(range(8)), 2), collate_fn=collate)
        scheduler = type("Schedule", (), {"get_last_lr": lambda self: [0.1]})()
        settings = LoopSettings(max_steps=2, grad_accum=1, tokens_per_image=1, log_every_n_steps=1,
                                eval_every_n_steps=None, eval_every_n_epochs=None, checkpoint_every_n_steps=None,
                                monitor="eval/loss", on_nonfinite=NonFiniteAction.stop, show_progress=True)
        TrainingLoop(TinyEngine(), scheduler, BatchStream(loader), LoopState(), HandlerRecordingLogger(),
                     lambda step: {}, lambda step, best: None, StopRequest(), settings).run()
        after = list(root.handlers)
    finally:
        root.removeHandler(console)
    # tqdm's handler writes with tqdm.write (above the bar) in place of the console handler
    assert seen and all("_TqdmLoggingHandler" in names and "StreamHandler" not in names for names in seen)
    assert console in after  # and the console handler is back afterwards


def test_a_piped_console_line_has_the_total_and_the_time_left():
    metrics = {"train/loss": 1.23456, "train/lr": 1e-3, "train/total_steps": 1500, "perf/tokens_per_s": 1234.4,
               "perf/tokens_per_s_per_device": 617.2, "perf/mfu": 0.4123, "perf/step_time_s": 0.5,
               "perf/data_wait_s": 0.01, "perf/forward_backward_s": 0.4, "perf/optimizer_s": 0.05,
               "perf/peak_memory_gib": 12.25, "perf/eta_s": 130.2}
    assert progress_line(250, metrics) == (
        "step 250/1500 | loss 1.2346 | lr 1.00e-03 | tokens/s 1234 (617/device) | MFU 41.2% | "
        "step 0.500s = data 0.010 + fwd-bwd 0.400 + opt 0.050 | mem 12.25 GiB | eta 2m10s")
    assert [duration(s) for s in (7, 130, 7500)] == ["7s", "2m10s", "2h05m"]

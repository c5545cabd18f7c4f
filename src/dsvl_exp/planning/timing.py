"""Step and epoch time from model FLOPs (models/flops.py, the formula the training log's MFU
uses) at an assumed MFU. No GPU figures are measured in BENCHMARKS.md yet, so the default MFU
is a stated assumption, 40 % of the dense 16-bit peak, not a measurement of this project; pass
--mfu with your own (the training log prints it)."""

from __future__ import annotations

import math

from dsvl_exp.models.flops import FlopCounts, step_flops
from dsvl_exp.planning.hardware import Gpu

DEFAULT_MFU = 0.40
RECOMPUTE_FACTOR = 4 / 3  # gradient checkpointing runs each checkpointed forward twice: 8 instead of 6 x params x tokens


def peak_flops(gpu: Gpu, precision: str) -> float:
    return gpu.peak_flops_16bit if precision in ("bf16", "fp16") else gpu.peak_flops_16bit / 2  # fp32 via TF32


def epoch_time(counts: FlopCounts, batch: dict, rows: int, tokens_per_image: int, train_samples: int, ranks: int,
               grad_accum: int, gpu: Gpu, precision: str, mfu: float, checkpointing: bool) -> dict:
    """`batch`: the expected micro-batch (workload.expected_batch). Model FLOPs stay the formula's
    (MFU counts them); the time adds the recomputation gradient checkpointing costs."""
    length = batch["positions"] / rows
    flops = step_flops(counts, rows=rows, length=length, image_tokens=batch["images"] * tokens_per_image,
                       supervised_tokens=batch["supervised"])
    micro_seconds = flops * (RECOMPUTE_FACTOR if checkpointing else 1.0) / (peak_flops(gpu, precision) * mfu)
    micro_steps = train_samples // (rows * ranks)  # the loader drops the last incomplete batch
    steps = math.ceil(micro_steps / grad_accum)
    step_seconds = micro_seconds * grad_accum
    return {
        "model_flops_per_micro_step": flops,
        "assumed_mfu": mfu,
        "step_seconds": step_seconds,
        "steps_per_epoch": steps,
        "epoch_seconds": steps * step_seconds,
        "tokens_per_second": batch["tokens"] * ranks / micro_seconds,
    }

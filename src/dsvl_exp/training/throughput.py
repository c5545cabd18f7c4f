"""What a training step costs on this device, measured without host syncs inside the step:
tokens/s, MFU against the device's peak, the step time split into data wait / forward-backward /
optimizer, and peak memory (torchtitan and nanoVLM log the same every log step).

The FLOP formula is `models/flops.py`'s (one place; `plan` and the benchmarks use it too).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from dsvl_exp.models.flops import FlopCounts, step_flops
from dsvl_exp.process import peak_rss_bytes

# Dense (no sparsity) tensor-core peaks in FLOP/s from NVIDIA's data sheets, for bf16 and fp16;
# matched against torch.cuda.get_device_name(). A card not listed is measured instead.
KNOWN_GPU_PEAKS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM / HBM3
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("V100", 125e12),  # fp16 only (no bf16 units)
)


@dataclass(frozen=True)
class DevicePeak:
    flops_per_s: float
    source: str  # said in the log: where the number came from


def device_peak(device: torch.device, precision: str) -> DevicePeak:
    """The device's peak for the run's precision: the data-sheet table for a known GPU in
    bf16/fp16, otherwise the best of a few large matmuls measured once at start-up."""
    precision = str(getattr(precision, "value", precision))
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        name = torch.cuda.get_device_name(device)
        for key, peak in KNOWN_GPU_PEAKS:
            if key in name:
                return DevicePeak(peak, f"data sheet, {name} {precision} dense")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    size = 4096 if device.type == "cuda" else (1024 if dtype == torch.float32 else 512)
    return DevicePeak(matmul_peak(device, dtype, size), f"measured, best of 3 {size}^3 {precision} matmuls at start-up")


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 3) -> float:
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    best = float("inf")
    a @ b  # warm-up (kernel selection)
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes, what they are): the CUDA caching allocator's peak on a GPU, peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda max allocated"
    return peak_rss_bytes(), "peak RSS"


class StepTimer:
    """Seconds per phase over a logging window. CPU: the host clock. CUDA: events recorded around
    the GPU phases (recording never waits for the GPU) and read once, at the log step; the data
    wait is host time on both (the loader runs on the host)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = defaultdict(float)
        self.events: list[tuple[str, object, object]] = []

    @contextmanager
    def phase(self, name: str, on_device: bool = True) -> Iterator[None]:
        if self.cuda and on_device:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.events.append((name, start, end))
            return
        started = time.perf_counter()
        yield
        self.totals[name] += time.perf_counter() - started

    def read(self) -> dict[str, float]:
        """The window's totals (waits for the last recorded event), then starts a new window."""
        if self.events:
            self.events[-1][2].synchronize()
            for name, start, end in self.events:
                self.totals[name] += start.elapsed_time(end) / 1000
        totals, self.totals, self.events = dict(self.totals), defaultdict(float), []
        return totals


class FlopTally:
    """Model FLOPs of the micro-batches of a window, from host-side shapes and counts only:
    `step_flops` is linear in rows, image tokens and supervised tokens, so each micro-batch adds
    its own term."""

    def __init__(self, counts: FlopCounts | None):
        self.counts, self.flops = counts, 0.0

    def add(self, rows: int, length: int, image_tokens: int, supervised_tokens: int) -> None:
        if self.counts is not None:
            self.flops += step_flops(self.counts, rows=rows, length=length, image_tokens=image_tokens,
                                     supervised_tokens=supervised_tokens)

    def take(self) -> float:
        flops, self.flops = self.flops, 0.0
        return flops


def performance_metrics(tokens: float, elapsed: float, steps: int, world_size: int, flops: float,
                        peak: DevicePeak | None, phases: dict[str, float], device: torch.device) -> dict:
    """The perf/* numbers of one logging window (tokens summed over all ranks, `flops` this
    rank's; every rank runs the same shapes give or take the batch draw)."""
    memory, _ = peak_memory_bytes(device)
    metrics = {
        "perf/tokens_per_s": tokens / elapsed,
        "perf/tokens_per_s_per_device": tokens / elapsed / world_size,
        "perf/step_time_s": elapsed / steps,
        "perf/data_wait_s": phases.get("data", 0.0) / steps,
        "perf/forward_backward_s": phases.get("forward_backward", 0.0) / steps,
        "perf/optimizer_s": phases.get("optimizer", 0.0) / steps,
        "perf/peak_memory_gib": memory / 2**30,
    }
    if peak is not None and flops:
        metrics["perf/mfu"] = flops / elapsed / peak.flops_per_s
    return metrics

"""Shared by the bench_* scripts: side-by-side timing, the CPU's description, JSON output.

Timings on a shared machine drift by tens of percent between minutes, so every comparison runs
its candidates alternated in one process (A B A B ...) and reports medians and ratios."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def cpu_description() -> dict:
    model, flags, family = platform.processor() or "unknown", set(), {}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            if line.startswith(("cpu family", "model\t")) and line.split(":", 1)[0].strip() not in family:
                family[line.split(":", 1)[0].strip()] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import torch

    if family:  # "AMD EPYC" alone does not tell Zen 3 from Zen 4
        model += f" (family {family.get('cpu family', '?')}, model {family.get('model', '?')})"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def machine_header(description: dict | None = None) -> str:
    """One line naming the machine a table was measured on: the CPU, the vector flags that change
    the figures (AVX2 vs AVX-512, bf16 units), cores and the load average at the start."""
    d = description or cpu_description()
    flags = [name for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if d[name]] or ["no AVX2"]
    one, five, _ = d["load_average"]
    return (f"machine: {d['cpu']} | {d['cores']} cores, {d['torch_threads']} torch threads | flags {' '.join(flags)} "
            f"(torch: {d['torch_cpu_capability']}) | load average {one:.2f} (1 min) {five:.2f} (5 min) | torch {d['torch']}")


def print_machine_header() -> dict:
    description = cpu_description()
    print(machine_header(description))
    return description


def alternate(candidates: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each candidate, called in turn `repeats` times."""
    for _ in range(warmup):
        for function in candidates.values():
            function()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, function in candidates.items():
            start = time.perf_counter()
            function()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def write_json(path: str | None, name: str, payload: dict) -> None:
    path = path or os.path.join("bench_results", f"{name}.json")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"cpu": cpu_description(), **payload}, indent=2))
    print(f"wrote {path}")

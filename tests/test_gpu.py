"""GPU-only checks (`pytest -m gpu`, run by scripts/gpu_check.sh; skipped without CUDA): the real
NCCL rule the CPU simulation in test_collectives.py replays, the mixed backend the ranks start,
CUDA-event step timing, the MFU peak and the loop's one host read per step with CUDA tensors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from helpers import run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
REPO = Path(__file__).resolve().parents[1]

BACKEND_SCRIPT = """
import torch, torch.distributed as dist
from dsvl_exp.training import distributed
distributed.init_process_group()
cpu, gpu = torch.ones(1), torch.ones(1, device="cuda")
dist.all_reduce(cpu); dist.all_reduce(gpu)  # gloo and nccl, one group
nccl_only = dist.new_group(backend="nccl")
try:
    dist.all_reduce(torch.ones(1), group=nccl_only)
    print("nccl-only accepted a CPU tensor")
except RuntimeError as error:
    print("refused:", error)
print("backend:", dist.get_backend())
"""


def test_ranks_start_cpu_gloo_cuda_nccl_and_nccl_alone_refuses_cpu_tensors(tmp_path):
    script = tmp_path / "backend.py"
    script.write_text(BACKEND_SCRIPT)
    result = run_cli([sys.executable, script], timeout=300)
    assert "refused: No backend type associated with device type cpu" in result.stdout  # what the simulation replays
    assert "backend: cpu:gloo,cuda:nccl" in result.stdout


def test_step_timer_peak_and_memory_on_cuda():
    from dsvl_exp.training.throughput import StepTimer, device_peak, peak_memory_bytes

    device = torch.device("cuda")
    timer = StepTimer(device)
    a = torch.randn(2048, 2048, device=device)
    with timer.phase("forward_backward"):
        for _ in range(10):
            a = a @ a / 2048
    with timer.phase("data", on_device=False):
        pass
    totals = timer.read()
    assert totals["forward_backward"] > 0 and totals["data"] >= 0
    peak = device_peak(device, "bf16")
    assert peak.flops_per_s > 1e12 and peak.source
    memory, kind = peak_memory_bytes(device)
    assert memory >= 2048 * 2048 * 4 and kind == "cuda max allocated"


@pytest.mark.parametrize("grad_accum", [1, 4])
def test_one_host_read_per_step_with_cuda_tensors(monkeypatch, grad_accum):
    import test_host_syncs

    class CudaEngine(test_host_syncs.TinyEngine):
        def __init__(self):
            super().__init__()
            self.module.cuda()
            self.optimizer = torch.optim.SGD(self.module.parameters(), lr=0.1)

        def __call__(self, input_ids, **kwargs):
            return super().__call__(input_ids.cuda(), **kwargs)

    monkeypatch.setattr(test_host_syncs, "TinyEngine", CudaEngine)
    reads, records = test_host_syncs.count_syncs(monkeypatch, grad_accum, max_steps=6, log_every_n_steps=100,
                                                 device="cuda")
    assert reads == 6 and records[0]["perf/peak_memory_gib"] > 0

"""chat, evaluate and serve share one device rule (`--device auto|cpu|cuda[:N]`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsvl_exp.inference.cli import UsageError, resolve_device
from helpers import run_module

REPO = Path(__file__).resolve().parents[1]


def gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_is_the_gpu_of_the_local_rank_when_there_is_one(monkeypatch):
    gpus(monkeypatch, 8)
    assert [resolve_device("auto", rank) for rank in (0, 3)] == ["cuda:0", "cuda:3"]
    assert (resolve_device("cuda", 5), resolve_device("cuda:2", 5), resolve_device("cpu", 5)) == ("cuda:5", "cuda:2", "cpu")
    gpus(monkeypatch, 0)
    assert resolve_device("auto", 3) == "cpu"


@pytest.mark.parametrize("spec, count, rank, message", [
    ("cuda", 0, 0, r"--device cuda: no GPU is visible here .* use --device cpu or --device auto"),
    ("cuda:1", 1, 0, r"--device cuda:1: this machine has 1 GPU\(s\) \(cuda:0 to cuda:0\); rank 0 cannot take cuda:1"),
    ("auto", 2, 2, r"rank 2 cannot take cuda:2: start fewer ranks or use --device cpu"),
    ("gpu", 1, 0, r"--device gpu: expected auto, cpu, cuda or cuda:N"),
])
def test_a_device_that_is_not_there_is_named(monkeypatch, spec, count, rank, message):
    gpus(monkeypatch, count)
    with pytest.raises(UsageError, match=message):
        resolve_device(spec, rank)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_evaluate_refuses_cuda_on_a_cpu_machine_before_loading_anything(tmp_path):
    result = run_module("dsvl_exp.evaluate", tmp_path / "no_model", "synthetic", "--device", "cuda", cwd=tmp_path,
                        timeout=120, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --device cuda: no GPU is visible here (torch.cuda.is_available() is false); use --device cpu or --device auto"]

"""The device/backend rule of collectives, replayed on CPU.

torch refuses a collective whose tensor lives on a device type the process group has no backend
for (NCCL alone: "No backend type associated with device type cpu"). Every distributed test here
runs gloo, which serves CPU tensors, so a GPU-only crash is invisible to them. These tests start
the process group the way a GPU machine does (CUDA reported available, the real
`init_process_group` code path), record the backend it asks for, and replace torch.distributed's
collectives with ones that enforce that backend's rule for a world of two ranks. Then they run
the code that issues collectives on every multi-rank run: data start-up, the loop's metrics and
stop flag, evaluation, checkpoint checks, rank-0 job hand-off and export.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from dsvl_exp import collectives

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dsvl_exp"
COLLECTIVE_CALLS = {"all_reduce", "all_gather", "all_gather_object", "broadcast", "broadcast_object_list",
                    "barrier", "reduce", "gather", "scatter", "all_to_all", "reduce_scatter", "gather_object"}


class SimulatedWorld:
    """torch.distributed for rank 0 of two, under `backend`: a collective on a device type the
    backend does not serve raises as torch does; otherwise the other rank is a copy of this one."""

    def __init__(self, backend: str):
        self.backend, self.issued = backend, []

    def check(self, name: str, device_type: str) -> None:
        if device_type not in collectives.served_device_types(self.backend):
            raise RuntimeError(f"No backend type associated with device type {device_type}")
        self.issued.append((name, device_type))

    def all_reduce(self, tensor, op=None, group=None, async_op=False):
        self.check("all_reduce", tensor.device.type)
        if op in (None, dist.ReduceOp.SUM):
            tensor.mul_(2)  # two identical ranks

    def object_device(self) -> str:
        """torch's rule for object collectives: CPU when the group has a CPU backend."""
        served = collectives.served_device_types(self.backend)
        return "cpu" if "cpu" in served else "cuda"

    def all_gather_object(self, output, value, group=None):
        self.check("all_gather_object", self.object_device())
        output[:] = [value] * len(output)

    def broadcast_object_list(self, values, src=0, group=None, device=None):
        self.check("broadcast_object_list", torch.device(device).type if device else self.object_device())

    def barrier(self, group=None, **_):
        self.issued.append(("barrier", None))

    def install(self, monkeypatch) -> SimulatedWorld:
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
        monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
        monkeypatch.setattr(dist, "get_backend", lambda group=None: self.backend)
        for name in ("all_reduce", "all_gather_object", "broadcast_object_list", "barrier"):
            monkeypatch.setattr(dist, name, getattr(self, name))
        return self


def backend_started_on_a_gpu_machine(monkeypatch) -> str:
    """The backend `training.distributed.init_process_group` asks torch for when CUDA exists."""
    from dsvl_exp.training import distributed

    requested = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend=None, **kwargs: requested.update(backend=backend))
    import deepspeed

    monkeypatch.setattr(deepspeed, "init_distributed", lambda **kwargs: None)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    distributed.init_process_group()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the tensors below stay on this CPU
    return requested["backend"]


def test_the_simulated_rule_refuses_what_torch_refuses():
    nccl_only = SimulatedWorld("nccl")
    with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
        nccl_only.all_reduce(torch.zeros(1))
    assert collectives.served_device_types("cpu:gloo,cuda:nccl") == {"cpu", "cuda"}
    assert collectives.served_device_types("gloo") >= {"cpu"} and collectives.served_device_types("nccl") == {"cuda"}


def test_data_start_up_collectives_run_under_the_gpu_machine_backend(monkeypatch):
    """The multi-GPU crash at data start-up (data/length.py's all-ranks decision on a CPU flag)."""
    from dsvl_exp.data import sharding

    backend = backend_started_on_a_gpu_machine(monkeypatch)
    world = SimulatedWorld(backend).install(monkeypatch)
    assert sharding.all_ranks_true(True) is True
    assert sharding.map_sharded([1, 2, 3, 4], lambda items: [i * 10 for i in items]) == [10, 10, 30, 30]  # rank 1 mirrors rank 0
    assert [name for name, _ in world.issued] == ["all_reduce", "all_gather_object"]


def test_training_collectives_run_under_the_gpu_machine_backend(monkeypatch):
    from dsvl_exp.training import checkpoint, distributed, exporting, interrupt, job_relay

    backend = backend_started_on_a_gpu_machine(monkeypatch)
    world = SimulatedWorld(backend).install(monkeypatch)
    assert distributed.all_reduce_sum([1.0, 2.0]) == [2.0, 4.0]
    assert interrupt.StopRequest().agreed() is False
    engine = type("Engine", (), {"module": torch.nn.Linear(2, 2)})()
    assert checkpoint.parameters_finite(engine)
    job_relay.share_job({"a": 1}, "run")
    exporting.collectives.barrier()
    assert len(world.issued) == 5


def test_the_gpu_machine_backend_serves_cpu_and_cuda_tensors(monkeypatch):
    assert backend_started_on_a_gpu_machine(monkeypatch) == "cpu:gloo,cuda:nccl"


def test_only_the_collectives_module_issues_collectives():
    """One place decides a collective's device: no other module calls torch.distributed's
    collectives itself (the simulation above can only vouch for the paths it runs)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "collectives.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in COLLECTIVE_CALLS
                    and isinstance(node.value, ast.Name) and node.value.id == "dist"):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} dist.{node.attr}")
    assert offenders == []

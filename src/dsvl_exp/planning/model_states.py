"""Per-rank bytes of the model states, by DeepSpeed's own partitioning rules (deepspeed 0.19,
runtime/zero/stage_1_and_2.py and partition_parameters.py), so that they equal what
training/footprint.py reads off a real engine to the byte:

- parameters: the model in the run's precision; ZeRO-3 keeps `ceil(numel / ranks)` of every
  parameter (frozen ones too) per rank, ZeRO-2 all of it.
- fp32 master copies: the optimizer's partition of each parameter group. ZeRO-2 flattens a
  group and pads it to a multiple of 2 x ranks before splitting it; ZeRO-3 concatenates its
  per-parameter shards.
- optimizer states: AdamW's two moments of the master partition, plus the 4-byte `step`
  tensor of each group.
- gradients (not in the footprint, estimated): each rank's partition of the trainable
  gradients in the run's precision (the reduce bucket is planned with the communication buffers).

Parameter groups are the recipe's (training/engine.py `parameter_groups`). Under ZeRO-3 the
parameters are already partitioned (1-D) when the groups are formed, so the decay / no-decay
split collapses and only the embedding split remains; this mirrors what the engine does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FP32 = 4
ADAM_MOMENTS = 2
STEP_TENSOR_BYTES = 4  # torch AdamW's `step`: a float32 scalar per parameter group
PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class ModelStates:
    parameter_bytes: int
    gradient_bytes: int
    master_bytes: int
    state_bytes: int
    offloaded_bytes: int  # of master + state (and parameters when offload_param), held in CPU memory

    @property
    def on_device(self) -> int:
        return self.parameter_bytes + self.gradient_bytes + self.master_bytes + self.state_bytes - self.offloaded_bytes


def group_numels(model: torch.nn.Module, stage: int) -> list[list[int]]:
    """The numel of every trainable parameter, per optimizer parameter group, as the engine forms them."""
    from dsvl_exp.training.engine import parameter_groups

    groups = parameter_groups(model, 1.0, None, 0.0)
    if stage == 3:
        merged: dict[bool, list[int]] = {}
        for group in groups:
            merged.setdefault(group["name"].startswith("embedding"), []).extend(p.numel() for p in group["params"])
        return [numels for _, numels in sorted(merged.items())]
    return [[p.numel() for p in group["params"]] for group in groups]


def zero2_partition(numels: list[int], ranks: int) -> int:
    alignment = 2 * ranks  # nccl_start_alignment_factor x data-parallel size
    return math.ceil(sum(numels) / alignment) * alignment // ranks


def model_states(model: torch.nn.Module, stage: int, ranks: int, precision: str, offload_optimizer: bool,
                 offload_param: bool) -> ModelStates:
    width = PRECISION_BYTES[precision]
    all_numels = [p.numel() for p in model.parameters()]
    groups = group_numels(model, stage)
    if stage == 3:
        parameters = sum(math.ceil(n / ranks) for n in all_numels) * width
        partitions = [sum(math.ceil(n / ranks) for n in numels) for numels in groups]
        gradients = sum(partitions) * width
    else:
        parameters = sum(all_numels) * width
        partitions = [zero2_partition(numels, ranks) for numels in groups]
        gradients = sum(partitions) * width  # the reduce bucket is counted with the communication buffers
    master = sum(partitions) * FP32
    state = ADAM_MOMENTS * master + STEP_TENSOR_BYTES * len(groups)
    offloaded = (master + state if offload_optimizer else 0) + (parameters if offload_param else 0)
    return ModelStates(parameters, gradients, master, state, offloaded)


def deepspeed_estimate(model: torch.nn.Module, stage: int, ranks: int, offload_optimizer: bool, offload_param: bool) -> int:
    """DeepSpeed's own estimate of model-state bytes per GPU (its `estimate_zero{2,3}_model_states_mem_needs`,
    which assume every parameter trains, 16-bit weights, and return (cpu, gpu, ...)), shown beside ours for comparison."""
    total = sum(p.numel() for p in model.parameters())
    if stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
        _, gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, num_gpus_per_node=ranks, num_nodes=1,
                                                          cpu_offload=offload_optimizer,
                                                          cpu_offload_params=offload_param, zero_init=True)
        return int(gpu)
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    _, gpu = estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=ranks, num_nodes=1,
                                                   cpu_offload=offload_optimizer)
    return int(gpu)

"""The closed choices of the config, as Enums in the schema: a wrong value fails at composition,
in under a second, with the allowed values listed by OmegaConf
(`Invalid value 'bogus', expected one of [forward, reversed_legacy]`).

Member names equal their values because OmegaConf looks YAML strings up by name. Ranks receive
the config with enums turned back into plain strings (training/launch.py), so code below the
entry point compares against ordinary strings."""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A str-valued choice that prints as its value (`fp32`, not `Precision.fp32`)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class ImageOrder(Choice):
    forward = "forward"
    reversed_legacy = "reversed_legacy"  # the reference's reversed insertion (its issue #800)


class Attention(Choice):
    causal = "causal"
    mmca = "mmca"
    mmca_legacy = "mmca_legacy"
    mmca_flex = "mmca_flex"  # mmca through FlexAttention (models/mmca_flex.py): for GPUs


class Precision(Choice):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class OnMissingImage(Choice):
    error = "error"
    skip = "skip"


class OnBadRecord(Choice):
    error = "error"
    skip = "skip"


class OffloadDevice(Choice):  # DeepSpeed's OffloadDeviceEnum
    none = "none"
    cpu = "cpu"
    nvme = "nvme"  # needs +zero.offload_*.nvme_path=<folder>


class SingleRankZero(Choice):
    stage0 = "stage0"  # one rank, ZeRO-2, fp32, no offload: DeepSpeed's stage 0 (the same math, no partition hooks)
    as_configured = "as_configured"  # the stage the zero option names, even on one rank


class LauncherKind(Choice):
    local = "local"
    slurm = "slurm"


class StartMethod(Choice):
    spawn = "spawn"
    fork = "fork"
    forkserver = "forkserver"


class Scheduler(Choice):
    """transformers' SchedulerType values that `get_scheduler` builds from warmup and total steps
    alone (the others need a metric or scheduler-specific arguments this config does not carry);
    tests/test_config.py checks them against transformers."""

    linear = "linear"
    cosine = "cosine"
    cosine_with_restarts = "cosine_with_restarts"
    polynomial = "polynomial"
    constant = "constant"
    constant_with_warmup = "constant_with_warmup"
    inverse_sqrt = "inverse_sqrt"


class NonFiniteAction(Choice):
    stop = "stop"  # stop the run, naming the step and the batch's sample ids
    skip = "skip"  # drop that micro-batch (no backward), count it, go on


class WandbMode(Choice):
    offline = "offline"
    online = "online"
    disabled = "disabled"

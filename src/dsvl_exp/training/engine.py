"""The DeepSpeed engine: its config from the `zero` group, parameter groups, the client optimizer."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from dsvl_exp.errors import ConfigError
from dsvl_exp.training.deepspeed_import import import_deepspeed
from dsvl_exp.training.zero_options import check_zero_options, offload_device, zero_optimization

deepspeed = import_deepspeed()


def deepspeed_config(
    zero: dict,
    micro_batch_size: int,
    grad_accum: int,
    world_size: int,
    precision: str,
    gradient_clipping: float,
    resumes_partitioned: bool | None = None,
) -> dict:
    """`zero`: the `zero` group, DeepSpeed's zero_optimization in its own names (training/zero_options.py).
    `resumes_partitioned`: whether the checkpoint this run resumes holds ZeRO partition files
    (None: a fresh run); see `engine_stage`."""
    check_zero_options(zero)
    stage = engine_stage(zero, world_size, precision, resumes_partitioned)
    zero_optimization_options = zero_optimization(zero, stage)
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision={precision!r}: expected fp32, bf16 or fp16")
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "gradient_clipping": gradient_clipping,
        "zero_optimization": zero_optimization_options,
        "bf16": {"enabled": precision == "bf16"},
        # fp16: DeepSpeed's dynamic loss scaler (loss_scale 0) starts at 2^16, halves on an
        # overflow (that step is skipped) and doubles after 100 clean steps (the reference's
        # window); bf16 needs none.
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 100, "hysteresis": 2, "min_loss_scale": 1},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,  # the loop logs; keep DeepSpeed's own printing quiet
        "wall_clock_breakdown": False,
    }


def engine_stage(zero: dict, world_size: int, precision: str, resumes_partitioned: bool | None) -> int:
    """The ZeRO stage the engine runs: the configured one, or 0 where `zero.single_rank=stage0`
    and one fp32 rank of ZeRO-2 without offload has nothing to partition (stage 0 steps the same
    AdamW on the same gradients without ZeRO-2's per-parameter gradient hooks). A resumed run
    keeps the layout of its checkpoint: a ZeRO-2 checkpoint's optimizer state is in partition
    files a stage-0 engine cannot read, and a stage-0 one has none for ZeRO-2 to read."""
    configured = int(zero["stage"])
    if configured != 2:
        return configured
    if resumes_partitioned is not None:
        return 2 if resumes_partitioned else 0
    fits = world_size == 1 and precision == "fp32" and offload_device(zero, "offload_optimizer") == "none"
    return 0 if fits and zero.get("single_rank") == "stage0" else 2


def holds_zero_partitions(checkpoint: Path | None) -> bool | None:
    """Whether a checkpoint tag folder was written by a ZeRO (1-3) engine: its optimizer state is
    in `*optim_states.pt` partition files (a stage-0 engine keeps it in the model states file)."""
    if checkpoint is None:
        return None
    return any(Path(checkpoint).glob("*optim_states.pt"))


@contextmanager
def model_construction(ds_config: dict) -> Iterator[object | None]:
    """Under ZeRO-3, parameters are partitioned across ranks as modules create them, so no rank
    ever holds a whole model: `zero.Init` for models built from a config, and transformers'
    `HfDeepSpeedConfig` so that `from_pretrained` and `resize_token_embeddings` partition and
    gather too. Yields the HfDeepSpeedConfig, which the caller must keep referenced for as long
    as the model is used (transformers holds it only weakly). `dtype` is not passed to
    `zero.Init`: in DeepSpeed 0.19 any explicit dtype turns into bf16 on CPU."""
    if ds_config["zero_optimization"]["stage"] != 3:
        yield None
        return
    from transformers.integrations import HfDeepSpeedConfig

    hf_deepspeed_config = HfDeepSpeedConfig(ds_config)
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        yield hf_deepspeed_config


def resolve_grad_accum(global_batch_size: int | None, micro_batch_size: int, world_size: int, grad_accum: int) -> int:
    """`train.global_batch_size`, when set, decides the accumulation steps for this world size
    (the reference's "global batch 128 = GPUs x micro-batch x accumulation")."""
    if global_batch_size is None:
        return grad_accum
    per_step = micro_batch_size * world_size
    if global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size={global_batch_size} is not a multiple of train.micro_batch_size="
            f"{micro_batch_size} x {world_size} rank(s); change one of them (or unset global_batch_size and use train.grad_accum)"
        )
    return global_batch_size // per_step


def parameter_groups(model: nn.Module, lr: float, embedding_lr: float | None, weight_decay: float) -> list[dict]:
    """decay / no-decay x base / embedding learning rate, over trainable parameters.

    No decay for every 1-D tensor (biases and norm weights, whatever their module is called;
    the reference matched names and so decayed its projection's LayerNorm)."""
    embedding_params = {id(p) for p in model.decoder.get_input_embeddings().parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (param.ndim >= 2, id(param) in embedding_params)
        groups.setdefault(key, []).append(param)
    result = []
    for (decay, is_embedding), params in sorted(groups.items()):
        result.append({
            "params": params,
            "weight_decay": weight_decay if decay else 0.0,
            "lr": embedding_lr if (is_embedding and embedding_lr is not None) else lr,
            "name": f"{'embedding' if is_embedding else 'base'}/{'decay' if decay else 'no_decay'}",
        })
    if not result:
        raise ConfigError("nothing to train: every parameter is frozen (see train.vision/projection/embeddings/decoder)")
    return result


def warmup_steps_for(total_steps: int, warmup_ratio: float, warmup_steps: int | None) -> int:
    if warmup_steps is not None:
        return int(warmup_steps)
    if not 0.0 <= warmup_ratio <= 1.0:
        raise ConfigError(f"optim.warmup_ratio={warmup_ratio} must be in [0, 1]; use optim.warmup_steps for a step count")
    return math.ceil(total_steps * warmup_ratio)


def build_optimizer(make_optimizer: Callable[..., torch.optim.Optimizer], groups: list[dict], lr: float,
                    fused: bool | None = None) -> torch.optim.Optimizer:
    """`make_optimizer(groups, lr=lr)`: the `optim.optimizer` partial over the project's parameter
    groups. torch's AdamW gets `fused` (None: its fused kernel wherever torch has one for the
    parameters' device: one kernel per group instead of a dozen foreach passes)."""
    keywords = {}
    if getattr(make_optimizer, "func", None) is torch.optim.AdamW and "fused" not in make_optimizer.keywords:
        keywords["fused"] = (fused_adamw_available(groups) if fused is None else fused) or None
    return make_optimizer(groups, lr=lr, **keywords)


def build_engine(model: nn.Module, optimizer: torch.optim.Optimizer, lr_scheduler, ds_config: dict):
    """The DeepSpeed engine around the client optimizer and its schedule."""
    import_deepspeed_muon_uncompiled()
    engine, optimizer, _, lr_scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, config=ds_config, dist_init_required=False
    )
    if ds_config["zero_optimization"]["stage"] == 0:
        keep_clipped_gradient_norm(engine)
    return engine, lr_scheduler


def keep_clipped_gradient_norm(engine) -> None:
    """At stage 0 the engine clips fp32 gradients with DeepSpeed's `clip_grad_norm_` but drops the
    norm it returns, which ZeRO's optimizers keep for `get_global_grad_norm()` (train/grad_norm):
    keep it here too. The clipping itself is DeepSpeed's, unchanged."""
    from deepspeed.runtime.utils import clip_grad_norm_

    def clip_fp32_gradients() -> None:
        engine._global_grad_norm = float(clip_grad_norm_(
            parameters=engine.module.parameters(), max_norm=engine.gradient_clipping(), mpu=engine.mpu))

    engine.clip_fp32_gradients = clip_fp32_gradients


def fused_adamw_available(groups: list[dict]) -> bool:
    """Whether torch has a fused AdamW kernel for every parameter's device."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = {p.device.type for group in groups for p in group["params"]}
    return bool(devices) and devices <= set(_get_fused_kernels_supported_devices())


def import_deepspeed_muon_uncompiled() -> None:
    """ZeRO-1/2 import DeepSpeed's Muon module at the first gradient reduction only for an
    isinstance check, and that module applies `torch.compile` at import, which pulls in
    torch._inductor (~1.2 s of the smoke run's start-up, 14 s under load; BENCHMARKS.md). We never
    run Muon (the optimizer is always torch's AdamW), so import it once with `torch.compile` as a
    no-op: the class is the real one, its kernels merely stay eager."""
    import sys

    name = "deepspeed.runtime.zero.muon.muon_optimizer"
    if name in sys.modules:
        return
    compile_function = torch.compile

    def eager(model=None, **kwargs):
        return model if model is not None else (lambda function: function)

    torch.compile = eager
    try:
        __import__(name)
    except ImportError:  # another DeepSpeed version without it: nothing to avoid
        pass
    finally:
        torch.compile = compile_function

"""One rank's memory for a config: model states, activations, communication buckets, and the
allocator's share, against a card."""

from __future__ import annotations

from omegaconf import DictConfig

from dsvl_exp.planning.activations import BatchShape, activation_bytes
from dsvl_exp.planning.architecture import meta_model
from dsvl_exp.planning.model_states import PRECISION_BYTES, deepspeed_estimate, model_states

GIB = 1024**3
CUDA_CONTEXT_BYTES = 1 * GIB  # CUDA context, cuBLAS/cuDNN workspaces and kernels: about 0.5-1 GiB per process
ALLOCATOR_HEADROOM = 0.10  # PyTorch's caching allocator: fragmentation and rounding, about 10 % of what it holds


def _largest_layer_params(model) -> int:
    from dsvl_exp.planning.activations import layer_stack

    stacks = (layer_stack(model.vision), layer_stack(model.decoder.get_decoder()))
    return max(sum(p.numel() for p in stack[0].parameters()) for stack in stacks)


def communication_bytes(model, zero: DictConfig, width: int) -> int:
    """ZeRO-2: the contiguous reduce bucket. ZeRO-3: the reduce bucket, the prefetch bucket and the
    live gathered parameters (at least one whole layer)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    reduce = min(int(zero.reduce_bucket_size), trainable) * width
    if int(zero.stage) != 3:
        return reduce
    live = max(int(zero.stage3_max_live_parameters), _largest_layer_params(model))
    return reduce + (live + int(zero.stage3_prefetch_bucket_size)) * width


def memory_per_rank(cfg: DictConfig, arch: DictConfig, tokenizer, shape: BatchShape, ranks: int, model=None) -> dict:
    """Bytes per rank, line by line, for `cfg` at the micro-batch `shape` over `ranks` data-parallel ranks."""
    model = model if model is not None else meta_model(cfg, tokenizer)
    precision, zero = str(cfg.train.precision), cfg.zero
    stage = int(zero.stage)
    offload_optimizer, offload_param = str(zero.offload_optimizer.device) != "none", str(zero.offload_param.device) != "none"
    states = model_states(model, stage, ranks, precision, offload_optimizer, offload_param)
    activations = activation_bytes(cfg, arch, tokenizer, shape, precision, bool(cfg.train.gradient_checkpointing))
    lines = {
        "parameters": 0 if offload_param else states.parameter_bytes,
        "gradients": states.gradient_bytes,
        "fp32 master weights": 0 if offload_optimizer else states.master_bytes,
        "optimizer states (Adam)": 0 if offload_optimizer else states.state_bytes,
        **{f"activations: {part}": value for part, value in activations.parts.items()},
        "communication buckets": communication_bytes(model, zero, PRECISION_BYTES[precision]),
        "CUDA context": CUDA_CONTEXT_BYTES,
    }
    lines["allocator headroom"] = int(ALLOCATOR_HEADROOM * sum(lines.values()))
    return {
        "lines": lines,
        "total": sum(lines.values()),
        "activations": activations.total,
        "model_states": {"parameter_bytes": states.parameter_bytes, "gradient_bytes": states.gradient_bytes,
                         "master_bytes": states.master_bytes, "state_bytes": states.state_bytes,
                         "offloaded_to_cpu_bytes": states.offloaded_bytes},
        "deepspeed_estimate_model_states": deepspeed_estimate(model, stage, ranks, offload_optimizer, offload_param),
    }

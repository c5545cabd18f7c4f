"""LoRA adapters through peft, injected in place so module names (and the DSVLModel) stay as
they are: a target Linear `x` becomes `x.base_layer` plus `x.lora_A/lora_B`."""

from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

DECODER_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA_MARKER = "lora_"


def add_lora(module: nn.Module, r: int, alpha: float, dropout: float, target_modules, part: str) -> int:
    """Inject adapters into `module`; returns how many Linear layers got one.

    `target_modules`: a list of module-name suffixes or one regex over full names (peft's rule).
    """
    if r <= 0:
        raise ValueError(f"lora.{part}.r={r}: a LoRA rank must be >= 1 when train.{part}=lora")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    try:
        inject_adapter_in_model(config, module)
    except ValueError as error:
        raise ValueError(f"lora.{part}.target_modules={target_modules!r} matched nothing usable: {error}") from error
    return sum(1 for name, _ in module.named_modules() if name.endswith("lora_A"))


def is_lora_parameter(name: str) -> bool:
    return LORA_MARKER in name

"""LoRA adapters through peft, injected in place so module names (and the DSVLModel) stay as
they are: a target Linear `x` becomes `x.base_layer` plus `x.lora_A/lora_B`."""

from __future__ import annotations

from torch import nn

from dsvl_exp.errors import ConfigError

DECODER_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA_MARKER = "lora_"


def add_lora(module: nn.Module, r: int, alpha: float, dropout: float, target_modules, part: str) -> int:
    """Inject adapters into `module`; returns how many Linear layers got one.

    `target_modules`: a list of module-name suffixes or one regex over full names (peft's rule).
    """
    if r <= 0:
        raise ConfigError(f"lora.{part}.r={r}: a LoRA rank must be >= 1 when train.{part}=lora")
    from peft import LoraConfig, inject_adapter_in_model  # only runs with LoRA pay for importing peft

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    try:
        inject_adapter_in_model(config, module)
    except ValueError as error:
        raise ConfigError(f"lora.{part}.target_modules={target_modules!r} matched nothing usable: {error}") from error
    return sum(1 for name, _ in module.named_modules() if name.endswith("lora_A"))


def is_lora_parameter(name: str) -> bool:
    return LORA_MARKER in name


# ---- state dicts of adapted models (export) --------------------------------------------------
ADAPTER_NAME = "default"  # the one adapter inject_adapter_in_model creates


def lora_scalings(model: nn.Module) -> dict[str, float]:
    """Adapted Linear path -> peft's scaling (alpha / r); plain floats, readable under ZeRO-3."""
    from peft.tuners.lora import LoraLayer

    return {name: float(layer.scaling[ADAPTER_NAME]) for name, layer in model.named_modules() if isinstance(layer, LoraLayer)}


def base_key(key: str) -> str:
    """`x.base_layer.weight` -> `x.weight`: the name the layer had before adapters."""
    return key.replace(".base_layer.", ".")


def _check_lora_keys(state: dict, scalings: dict[str, float]) -> None:
    expected = {f"{layer}.lora_{ab}.{ADAPTER_NAME}.weight" for layer in scalings for ab in "AB"}
    found = {key for key in state if is_lora_parameter(key)}
    if found != expected:
        raise ValueError(f"LoRA tensors that export cannot merge (only peft LoRA on Linear layers, one adapter): "
                         f"unexpected {sorted(found - expected)[:5]}, missing {sorted(expected - found)[:5]}")


def merge_lora_state_dict(state: dict, scalings: dict[str, float]) -> dict:
    """The state dict of the merged model: W + scaling * B @ A (peft's merge for Linear, computed
    in fp32), adapter tensors dropped, `base_layer` names restored. Works on a gathered state dict,
    so ZeRO-3 partitioned modules are never touched."""
    _check_lora_keys(state, scalings)
    merged = {base_key(key): value for key, value in state.items() if not is_lora_parameter(key)}
    for layer, scaling in scalings.items():
        lora_a = state[f"{layer}.lora_A.{ADAPTER_NAME}.weight"].float()
        lora_b = state[f"{layer}.lora_B.{ADAPTER_NAME}.weight"].float()
        weight = merged[f"{layer}.weight"]
        merged[f"{layer}.weight"] = (weight.float() + scaling * (lora_b @ lora_a)).to(weight.dtype)
    return merged


def split_adapters(state: dict, scalings: dict[str, float]) -> tuple[dict, dict[str, dict]]:
    """(base state dict with the pre-adapter names, {part: peft adapter state dict}); adapter keys
    are relative to the part (`decoder`, `vision`), as peft's get_peft_model_state_dict writes them."""
    _check_lora_keys(state, scalings)
    base = {base_key(key): value for key, value in state.items() if not is_lora_parameter(key)}
    adapters: dict[str, dict] = {}
    for key, value in state.items():
        if is_lora_parameter(key):
            part, rest = key.split(".", 1)
            adapters.setdefault(part, {})[rest.replace(f".{ADAPTER_NAME}.", ".")] = value
    return base, adapters

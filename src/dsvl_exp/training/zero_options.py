"""The `zero` group as DeepSpeed's `zero_optimization`: passed through, checked by DeepSpeed's own
config model (`DeepSpeedZeroConfig`, pydantic) so a misspelt or mistyped key is a ConfigError
naming `zero.<key>` at start-up instead of a traceback from inside `deepspeed.initialize`."""

from __future__ import annotations

import difflib

from dsvl_exp.errors import ConfigError

PROJECT_KEYS = ("single_rank",)  # the project's own keys in the group; DeepSpeed never sees them
OFFLOAD_KEYS = ("offload_optimizer", "offload_param")
DEEPSPEED_DOCS = "https://www.deepspeed.ai/docs/config-json/#zero-optimizations-for-fp16-training"


def offload_device(zero: dict, key: str) -> str:
    return str((zero.get(key) or {}).get("device", "none"))


def zero_optimization(zero: dict, stage: int | None = None) -> dict:
    """DeepSpeed's `zero_optimization` from the group (plain values: enums as strings), at `stage`
    when given. An offload node with device none is left out: DeepSpeed reads a present node as
    offload configured in places (its engine's `zero_offload_optimizer() is not None`), so leaving
    it out keeps the engine exactly as without offload."""
    options = deepspeed_keys(zero)
    for key in OFFLOAD_KEYS:
        if offload_device(zero, key) == "none":
            options.pop(key, None)
    if stage is not None:
        options["stage"] = stage
    return options


def deepspeed_keys(zero: dict) -> dict:
    """The group without the project's keys, offload devices as plain strings."""
    options = {key: value for key, value in zero.items() if key not in PROJECT_KEYS}
    for key in OFFLOAD_KEYS:
        if isinstance(options.get(key), dict):
            options[key] = {name: str(value) if name == "device" else value for name, value in options[key].items()}
    return options


def check_zero_options(zero: dict) -> None:
    """Every key and value by DeepSpeed's config model (the project's cross-key rules, such as
    offload_param needing stage 3, are config/validation.py's)."""
    from pydantic import ValidationError

    from dsvl_exp.training.deepspeed_import import import_deepspeed

    import_deepspeed()
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    try:
        DeepSpeedZeroConfig(**deepspeed_keys(zero))  # unused offload nodes too: a misspelling there is named
    except ValidationError as error:
        problems = [problem_text(problem, DeepSpeedZeroConfig) for problem in error.errors()]
        raise ConfigError(f"DeepSpeed does not accept {'; '.join(problems)}. The zero group holds DeepSpeed's "
                          f"zero_optimization keys (see {DEEPSPEED_DOCS}); fix the key or value, "
                          "and add a key the group lacks with + (+zero.sub_group_size=1e9)") from None


def problem_text(problem: dict, model) -> str:
    location = [str(part) for part in problem["loc"]]
    text = f"zero.{'.'.join(location)}={problem.get('input')!r}: {problem['msg']}"
    if problem["type"] == "extra_forbidden":
        close = difflib.get_close_matches(location[-1], known_keys(model, location[:-1]), n=1)
        parent = "".join(f"{part}." for part in location[:-1])
        text += f" (did you mean zero.{parent}{close[0]}?)" if close else " (no such key)"
    return text


def known_keys(model, path: list[str]) -> list[str]:
    """The field names of DeepSpeed's config model at `path` (offload_optimizer -> its model's)."""
    for part in path:
        field = model.model_fields.get(part)
        nested = [arg for arg in getattr(field.annotation, "__args__", (field.annotation,))
                  if hasattr(arg, "model_fields")] if field is not None else []
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields) + list(PROJECT_KEYS if not path else ())

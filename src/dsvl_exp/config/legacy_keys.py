"""Configs written before keys were renamed, in today's names, so that an old run's checkpoint
still resumes and its manifest still diffs and reproduces. Each step maps an old name to its new
one; a key that did not exist then is given its default, which is what the old run computed with.

The renames: `optim.betas` / `optim.eps` -> `optim.optimizer.betas` / `.eps` (AdamW was the only
optimizer then); `optim.scheduler: <name>` -> `optim.scheduler.name`; `zero.offload_optimizer:
none|cpu` (and `offload_param`) -> DeepSpeed's `{device: none|cpu}`; no `zero.single_rank`."""

from __future__ import annotations

import copy

from omegaconf import OmegaConf

from dsvl_exp.config import schema

# old command-line key -> today's (an override `optim.scheduler=linear` of an old run's manifest)
RENAMED_OVERRIDES = {"optim.betas": "optim.optimizer.betas", "optim.eps": "optim.optimizer.eps",
                     "optim.scheduler": "optim.scheduler.name", "zero.offload_optimizer": "zero.offload_optimizer.device",
                     "zero.offload_param": "zero.offload_param.device"}


def defaults(node) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(node), enum_to_str=True)


def upgrade(config: dict) -> dict:
    """`config` (a run's resolved config, as saved) in today's names; a current one comes back equal."""
    config = copy.deepcopy(config)
    if isinstance(config.get("optim"), dict):
        upgrade_optim(config["optim"])
    if isinstance(config.get("zero"), dict):
        upgrade_zero(config["zero"])
    return config


def upgrade_optim(optim: dict) -> None:
    if "optimizer" not in optim and ("betas" in optim or "eps" in optim):
        optim["optimizer"] = defaults(schema.AdamWConfig)
    for key in ("betas", "eps"):
        if key in optim:
            optim["optimizer"][key] = optim.pop(key)
    if isinstance(optim.get("scheduler"), str):
        optim["scheduler"] = {**defaults(schema.SchedulerConfig), "name": optim["scheduler"]}


def upgrade_zero(zero: dict) -> None:
    for key in ("offload_optimizer", "offload_param"):
        if isinstance(zero.get(key), str):
            zero[key] = {**defaults(schema.OffloadConfig), "device": zero[key]}
    zero.setdefault("single_rank", str(schema.ZeroConfig.single_rank))


def upgrade_overrides(overrides: list[str]) -> list[str]:
    """Command-line overrides of an old run (its manifest's `hydra.overrides`) in today's names."""
    upgraded = []
    for override in overrides:
        key, equals, value = override.partition("=")
        bare = key.lstrip("+~")
        if equals and bare in RENAMED_OVERRIDES:
            override = f"{key[:len(key) - len(bare)]}{RENAMED_OVERRIDES[bare]}={value}"
        upgraded.append(override)
    return upgraded

"""Checks that span keys or that Hydra's typed merge cannot make, run on the composed config
before anything is built (under a second): unknown keys added with `+`, values that resolve to
a wrong choice, parts that cannot follow each other, a dataset without a file. Each failure is
a ConfigError naming the key and the fix."""

from __future__ import annotations

import dataclasses
import difflib

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dsvl_exp.config.schema import PerceiverProjectionConfig, QwenVisionConfig, ViTProjectionConfig
from dsvl_exp.errors import ConfigError

# Projections that need the encoder's patch grid; a resampling tower (Qwen-VL's) has none left.
PATCH_GRID_PROJECTIONS = {ViTProjectionConfig._target_: "vit", PerceiverProjectionConfig._target_: "perceiver"}


def validate_config(cfg: DictConfig) -> None:
    check_known_keys(cfg)
    check_resolves(cfg)
    check_parts_fit(cfg)
    check_dataset_paths(cfg)


def unknown_keys(node, prefix: str = "") -> list[tuple[str, list[str]]]:
    """(dotted key, known keys of its parent) for every key a typed node's schema lacks. Hydra's
    `+key=value` adds keys even to typed nodes (it opens them), so composition alone lets
    `+optim.lrr=1` through."""
    found = []
    if isinstance(node, DictConfig):
        schema = node._metadata.object_type
        known = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
        for key in node.keys():
            dotted = f"{prefix}{key}"
            if known is not None and key not in known:
                found.append((dotted, known))
            elif not OmegaConf.is_missing(node, key) and not OmegaConf.is_interpolation(node, key):
                found += unknown_keys(node._get_node(key), f"{dotted}.")
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            if not OmegaConf.is_missing(node, index):
                found += unknown_keys(node._get_node(index), f"{prefix}{index}.")
    return found


def check_known_keys(cfg: DictConfig) -> None:
    problems = []
    for dotted, known in unknown_keys(cfg):
        leaf = dotted.rsplit(".", 1)[-1]
        parent = dotted.rsplit(".", 1)[0] + "." if "." in dotted else ""
        close = difflib.get_close_matches(leaf, known, n=1)
        hint = f"did you mean {parent}{close[0]}?" if close else f"known keys: {', '.join(known)}"
        problems.append(f"{dotted} ({hint})")
    if problems:
        raise ConfigError(f"unknown config key(s): {'; '.join(problems)}. Typed groups take only their schema's "
                          "keys, also with `+`; fix the spelling (see config/schema.py for every key).")


def check_resolves(cfg: DictConfig) -> None:
    """Interpolations (`${oc.env:WANDB_MODE,offline}`) are checked against their type only when resolved."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        raise ConfigError(f"config key {key}: {getattr(error, 'msg', error)}") from None


def check_parts_fit(cfg: DictConfig) -> None:
    vision_target = OmegaConf.select(cfg, "vision._target_")
    projection = PATCH_GRID_PROJECTIONS.get(OmegaConf.select(cfg, "projection._target_"))
    if vision_target == QwenVisionConfig._target_ and projection:
        raise ConfigError(
            f"vision=qwen cannot be followed by projection={projection}: the Qwen-VL tower already resamples its "
            f"patches into vision.num_queries tokens, and projection={projection} needs the patch grid. Use "
            f"projection=baseline with vision=qwen, or vision=clip with projection={projection}."
        )


def check_dataset_paths(cfg: DictConfig) -> None:
    """Every dataset needs a file (its `path`) or the reference data root (`data.data_path`)."""
    data = cfg.data
    if OmegaConf.is_missing(data, "data_path"):
        raise ConfigError("data.data_path is not set: this data config reads the reference datasets from their "
                          "original layouts under one root. Set data.data_path=<root> (README: Data).")
    if data.data_path:
        return
    for split in ("train", "eval"):
        for index, spec in enumerate(data[split]):
            if not OmegaConf.is_missing(spec, "path") and spec.path:
                continue
            key = f"data.{split}.{index}.path"
            if split == "eval":
                raise ConfigError(
                    f"{key} is not set: dataset {index} of the eval set (format {spec.format}) needs its file. "
                    f"Set {key}=<file>, or drop the separate eval set with data.eval=[] (and hold out part of "
                    "the training data instead with data.eval_split=0.1, say)."
                )
            raise ConfigError(f"{key} is not set: training dataset {index} (format {spec.format}) needs its file. "
                              f"Set {key}=<file>, or data.data_path=<root> for the reference datasets' layout.")

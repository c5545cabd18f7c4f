"""Checks that span keys or that Hydra's typed merge cannot make, run on the composed config
before anything is built (under a second): unknown keys added with `+`, values that resolve to
a wrong choice, parts that cannot follow each other, a dataset without a file, training
settings that cannot run. Each failure is a ConfigError naming the key and the fix."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dsvl_exp.config.ranges import check_value_ranges
from dsvl_exp.config.schema import PerceiverProjectionConfig, QwenVisionConfig, ViTProjectionConfig
from dsvl_exp.errors import ConfigError

# Projections that need the encoder's patch grid; a resampling tower (Qwen-VL's) has none left.
PATCH_GRID_PROJECTIONS = {ViTProjectionConfig._target_: "vit", PerceiverProjectionConfig._target_: "perceiver"}


def validate_config(cfg: DictConfig) -> None:
    check_known_keys(cfg)
    check_resolves(cfg)
    check_parts_fit(cfg)
    check_dataset_paths(cfg)
    check_training_settings(cfg)
    check_precision_fits_the_machine(cfg)
    check_value_ranges(cfg)
    check_local_folders(cfg)
    check_tracker_packages(cfg)


def unknown_keys(node, prefix: str = "") -> list[tuple[str, list[str]]]:
    """(dotted key, known keys of its parent) for every key a typed node's schema lacks. Hydra's
    `+key=value` adds keys even to typed nodes (it opens them), so composition alone lets
    `+optim.lrr=1` through."""
    found = []
    if isinstance(node, DictConfig):
        schema = node._metadata.object_type
        known = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
        if getattr(schema, "checked_by_deepspeed", False):
            known = None  # any DeepSpeed key; its config model checks them (training/zero_options.py)
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
                          "original layouts under one root. Set data.data_path=<root> (docs/guide/data.md).")
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


# what train.<part> takes (models/freezing.py applies it); vision and decoder may also be lora
TRAINABLE_CHOICES = {"vision": (True, False, "auto", "lora"), "projection": (True, False, "auto"),
                     "embeddings": (True, False, "auto"), "decoder": (True, False, "auto", "lora")}


def monitored_metrics(generation: bool) -> list[str]:
    return ["train/loss", "eval/loss"] + (["eval/accuracy"] if generation else [])


def check_training_settings(cfg: DictConfig) -> None:
    for part, allowed in TRAINABLE_CHOICES.items():
        choice = cfg.train[part]
        if not any(choice is option if isinstance(option, bool) else choice == option for option in allowed):
            expected = "true, false, auto or lora" if "lora" in allowed else "true, false or auto"
            raise ConfigError(f"train.{part}={choice!r}: expected {expected}")
    if cfg.train.max_steps is None and cfg.train.epochs is None:
        raise ConfigError("train.max_steps and train.epochs are both null: set one (max_steps wins when both are set)")
    for key in ("train.max_steps", "train.epochs", "train.micro_batch_size", "train.grad_accum",
                "launcher.nproc_per_node", "launcher.omp_num_threads"):
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value} must be at least 1")
    if cfg.zero.offload_param.device != "none" and cfg.zero.stage != 3:
        raise ConfigError(f"zero.offload_param.device={cfg.zero.offload_param.device} needs ZeRO stage 3 (zero=3 or zero=3_offload); "
                          f"stage {cfg.zero.stage} keeps parameters on every rank")
    if not 0 <= cfg.optim.warmup_ratio <= 1:
        raise ConfigError(f"optim.warmup_ratio={cfg.optim.warmup_ratio} must be in [0, 1]; use optim.warmup_steps for a step count")
    available = monitored_metrics(cfg.eval.generation)
    if cfg.eval.monitor not in available:
        raise ConfigError(f"eval.monitor={cfg.eval.monitor!r} will not be logged; choose one of {available}"
                          + ("" if cfg.eval.generation else " (eval/accuracy needs eval.generation=true)"))


def check_precision_fits_the_machine(cfg: DictConfig, cuda_available: bool | None = None) -> None:
    """fp16 trains only on a GPU (DeepSpeed's fp16 path and its loss scaler are CUDA's). Checked
    where the ranks start: a SLURM job is composed on a login node without a GPU."""
    if cfg.train.precision != "fp16" or cfg.launcher.kind != "local":
        return
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        raise ConfigError("train.precision=fp16 needs a GPU and this machine has none; use train.precision=bf16 "
                          "(or fp32) here")


def check_local_folders(cfg: DictConfig) -> None:
    """A pretrained part given as a local path (absolute, ./ or ~) must exist; anything else is a
    hub name, which from_pretrained resolves (or refuses offline) itself."""
    checkpoint_dir = OmegaConf.select(cfg, "checkpoint.dir")
    if checkpoint_dir and Path(checkpoint_dir).expanduser().exists() and not Path(checkpoint_dir).expanduser().is_dir():
        raise ConfigError(f"checkpoint.dir={checkpoint_dir} is a file, not a directory: point it at a directory "
                          "(or null for <run dir>/checkpoints)")
    for key in ("vision.pretrained", "decoder.pretrained", "tokenizer.path"):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str) and value.startswith(("/", "./", "../", "~")) and not Path(value).expanduser().exists():
            raise ConfigError(f"{key}={value}: no such file or folder. Point it at a local Hugging Face folder "
                              "(config.json + weights) or give a hub name.")


# the trackers' packages (the `trackers` extra); W&B is a core dependency
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def check_tracker_packages(cfg: DictConfig) -> None:
    """A chosen tracker that is not installed fails before any rank starts."""
    import importlib.util

    for name, package in TRACKER_PACKAGES.items():
        if cfg.logger.get(name) is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(f"logger={name} needs the {package} package: pip install 'dsvl_exp[trackers]' "
                              f"(or leave {name} out of logger=...)")

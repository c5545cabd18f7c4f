"""Values the typed schema accepts but that would mean something else: 0 read as "never", a
negative rate, a key silently ignored beside another. Each is refused before anything is built,
naming the key and the allowed range (validation.py runs these with the other checks)."""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from dsvl_exp.errors import ConfigError

# key -> (smallest allowed value, what null means); null itself is allowed where the schema says Optional
AT_LEAST = {
    "eval.every_n_steps": (1, "null: never"),
    "eval.every_n_epochs": (1, "null: never"),
    "eval.batch_size": (1, None),
    "eval.max_batches": (1, "null: all"),
    "checkpoint.every_n_steps": (1, "null: never"),
    "checkpoint.keep_last": (1, "null: keep all"),
    "optim.warmup_steps": (0, None),
    "train.gradient_clipping": (0, "0: no clipping"),
    "train.global_batch_size": (1, None),
    "data.max_seq_len": (1, None),
}


def check_value_ranges(cfg: DictConfig) -> None:
    for key, (smallest, meaning) in AT_LEAST.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and value < smallest:
            raise ConfigError(f"{key}={value} must be at least {smallest}" + (f" ({meaning})" if meaning else ""))
    check_optimizer(cfg.optim)
    check_batch_sizes(cfg)
    check_generation(cfg.eval)
    check_lora(cfg)
    check_model_shapes(cfg)


def check_optimizer(optim: DictConfig) -> None:
    for key in ("lr", "embedding_lr"):
        value = optim.get(key)
        if value is not None and not value > 0:
            raise ConfigError(f"optim.{key}={value} must be greater than 0")
    if optim.optimizer.get("betas") is None:  # an optimizer without betas (optimizer=sgd)
        return
    betas = list(optim.optimizer.betas)
    if len(betas) != 2 or not all(0 <= beta < 1 for beta in betas):
        raise ConfigError(f"optim.optimizer.betas={betas}: each beta must be in [0, 1) "
                          "(two values, e.g. optim.optimizer.betas=[0.9,0.95])")


def check_batch_sizes(cfg: DictConfig) -> None:
    train = cfg.train
    if train.global_batch_size is None:
        return
    if train.grad_accum != 1:
        raise ConfigError(f"train.global_batch_size={train.global_batch_size} and train.grad_accum={train.grad_accum} "
                          "are both set, and global_batch_size decides the accumulation: set one of them")
    ranks = cfg.launcher.nproc_per_node * cfg.launcher.nodes
    per_step = train.micro_batch_size * ranks
    if train.global_batch_size % per_step:
        raise ConfigError(f"train.global_batch_size={train.global_batch_size} is not a multiple of "
                          f"train.micro_batch_size={train.micro_batch_size} x {ranks} rank(s); change one of them")


def check_generation(eval_cfg: DictConfig) -> None:
    if eval_cfg.generation and eval_cfg.max_new_tokens < 1:
        raise ConfigError(f"eval.max_new_tokens={eval_cfg.max_new_tokens} must be at least 1 while "
                          "eval.generation=true (or set eval.generation=false)")


def check_lora(cfg: DictConfig) -> None:
    for part in ("decoder", "vision"):
        r = OmegaConf.select(cfg, f"lora.{part}.r")
        if r is not None and r < 1:
            raise ConfigError(f"lora.{part}.r={r} must be at least 1 (the adapters' rank)")


def check_model_shapes(cfg: DictConfig) -> None:
    for key in ("vision.num_queries", "projection.num_queries"):
        value = OmegaConf.select(cfg, key)
        if value is not None and (value < 1 or math.isqrt(value) ** 2 != value):
            root = max(1, math.isqrt(max(value, 1)))
            raise ConfigError(f"{key}={value} must be a square (the queries form a grid), e.g. {root * root} or "
                              f"{(root + 1) ** 2}")
    if OmegaConf.select(cfg, "vision.pretrained"):
        return  # the pretrained tower's own config decides its sizes
    image_size, patch_size = OmegaConf.select(cfg, "vision.image_size"), OmegaConf.select(cfg, "vision.patch_size")
    if image_size is not None and patch_size is not None and (patch_size < 1 or image_size % patch_size):
        raise ConfigError(f"vision.patch_size={patch_size} does not divide vision.image_size={image_size}: "
                          "the image must split into whole patches")

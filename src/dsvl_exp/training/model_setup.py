"""The model half of the recipe: compose the model from the config groups, then decide what
trains (LoRA adapters, freezing, gradient checkpointing). Reads the config; the builders it calls
take flat values."""

from __future__ import annotations

import logging

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dsvl_exp.models.vision_tower import check_vision_tower
from dsvl_exp.models.dsvl import DSVLModel
from dsvl_exp.models.freezing import apply_freezing, resolve_trainable
from dsvl_exp.models.lora import DECODER_TARGETS, add_lora
from dsvl_exp.models.tokenizer import image_token_id

log = logging.getLogger(__name__)


def build_model(cfg: DictConfig, tokenizer) -> DSVLModel:
    """The run config's vision / decoder / projection groups -> a DSVLModel (models/build.py
    composes; this only reads the config)."""
    log.info("Instantiating vision <%s>", cfg.vision._target_)
    vision = instantiate(cfg.vision)
    log.info("Instantiating decoder <%s>", cfg.decoder._target_)
    decoder = instantiate(cfg.decoder, vocab_size=len(tokenizer))
    log.info("Instantiating projection <%s>", cfg.projection._target_)
    check_vision_tower(vision)
    try:
        projection = instantiate(cfg.projection, vision=vision, decoder_hidden_size=decoder.config.hidden_size)
    except InstantiationException as error:  # the builder's own refusal (a pairing it cannot follow), unwrapped
        raise error.__cause__ or error
    return DSVLModel(
        vision=vision,
        projection=projection,
        decoder=decoder,
        image_token_id=image_token_id(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        image_order=cfg.model.image_order,
        pad_to_multiple_of=cfg.model.pad_to_multiple_of,
    )


def configure_training(model: DSVLModel, cfg: DictConfig) -> None:
    """LoRA adapters, freezing (train.*) and gradient checkpointing, in that order."""
    vision = resolve_trainable(cfg.train.vision, cfg.vision.pretrained, "train.vision", allow_lora=True)
    decoder = resolve_trainable(cfg.train.decoder, cfg.decoder.pretrained, "train.decoder", allow_lora=True)
    for part, choice, module, default_targets in (
        ("vision", vision, model.vision, getattr(model.vision, "lora_target_modules", None)),
        ("decoder", decoder, model.decoder, DECODER_TARGETS),
    ):
        if choice == "lora":
            settings = OmegaConf.to_container(cfg.lora[part], resolve=True)
            targets = settings["target_modules"] if settings["target_modules"] is not None else default_targets
            count = add_lora(module, settings["r"], settings["alpha"], settings["dropout"], targets, part)
            log.info("LoRA r=%d alpha=%s on %d %s layers", settings["r"], settings["alpha"], count, part)
    apply_freezing(
        model,
        vision=vision,
        projection=resolve_trainable(cfg.train.projection, None, "train.projection"),
        embeddings=resolve_trainable(cfg.train.embeddings, cfg.decoder.pretrained, "train.embeddings"),
        decoder=decoder,
    )
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()

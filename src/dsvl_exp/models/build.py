"""Model composition: a projection from a vision tower's contract, and the whole DSVLModel from
its parts or from a `DSVLConfig` (what an export's config.json holds).

Builders take flat values or a model config object, never the run config: the recipe
(`training/model_setup.py`) reads the run config and calls these; `from_pretrained`, export and
the reference import call them with no run config at all."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from .config import DSVLConfig
from .decoder import ATTENTION_CHOICES, ATTENTION_IMPLEMENTATIONS
from .projection import PROJECTION_BUILDERS, BaselineProjection, ViTProjection
from .qwen_vit import build_qwen_vision_tower
from .resampler import Resampler
from .vision import CLIPVisionTower, clip_image_processor
from .vision_tower import VisionTower, check_vision_tower

def build_projection(builder: str | Callable[..., nn.Module], vision: VisionTower, decoder_hidden_size: int,
                     **settings) -> nn.Module:
    """`builder`: a name of `PROJECTION_BUILDERS` or a function called as
    `builder(vision=..., decoder_hidden_size=..., **settings)` (`settings`: its own group's values,
    e.g. `num_queries`), as `hydra.utils.instantiate` calls a `projection` group's `_target_`."""
    if isinstance(builder, str):
        if builder not in PROJECTION_BUILDERS:
            raise ValueError(f"projection {builder!r} is not one of {sorted(PROJECTION_BUILDERS)}")
        builder = PROJECTION_BUILDERS[builder]
    check_vision_tower(vision)
    return builder(vision=vision, decoder_hidden_size=decoder_hidden_size, **settings)


def projection_architecture(projection: nn.Module) -> dict:
    """The projection's name and own settings; the rest it takes from the tower on rebuild."""
    if isinstance(projection, BaselineProjection):
        return {"type": "baseline"}
    if isinstance(projection, ViTProjection):
        return {"type": "vit"}
    if isinstance(projection, Resampler):
        return {"type": "perceiver", "num_queries": projection.num_queries}
    raise ValueError(f"{type(projection).__name__} is not a projection that config.json can describe "
                     f"(one of {sorted(PROJECTION_BUILDERS)})")


def decoder_attention(decoder: LlamaForCausalLM) -> str:
    implementation = decoder.config._attn_implementation
    names = {impl: name for name, impl in ATTENTION_IMPLEMENTATIONS.items()}
    return names.get(implementation, "causal")  # sdpa / eager / flash are all plain causal attention


def config_from_parts(vision: VisionTower, projection: nn.Module, decoder: LlamaForCausalLM, image_token_id: int,
                      pad_token_id: int, eos_token_id: int, image_order: str = "forward",
                      pad_to_multiple_of: int = 8) -> DSVLConfig:
    """Describe a model composed of these parts completely (architectures, not pretrained paths)."""
    check_vision_tower(vision)
    first = next(decoder.parameters())
    return DSVLConfig(
        vision=vision.architecture(),
        projection=projection_architecture(projection),
        decoder={"type": "llama", "llama_config": decoder.config.to_dict()},
        attention=decoder_attention(decoder),
        image_order=image_order,
        pad_to_multiple_of=pad_to_multiple_of,
        tokens_per_image=projection.output_tokens(vision.num_tokens),
        image_token_id=image_token_id,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        dtype=str(first.dtype).removeprefix("torch."),
    )


def model_config(model) -> DSVLConfig:
    """Describe a built model as it is now (after LoRA, a dtype change, an edited EOS id)."""
    return config_from_parts(model.vision, model.projection, model.decoder, model.image_token_id, model.pad_token_id,
                             model.eos_token_id, model.image_order, model.pad_to_multiple_of)


def build_vision_from_architecture(architecture: dict, image_processor=None) -> VisionTower:
    kind = architecture.get("type")
    if kind == "clip":
        config = CLIPVisionConfig.from_dict(architecture["clip_config"])
        model = CLIPVisionModel._from_config(config, dtype=torch.float32)
        processor = image_processor or clip_image_processor(config.image_size)
        return CLIPVisionTower(model, processor, architecture.get("feature_layer", -1))
    if kind == "qwen":
        tower = build_qwen_vision_tower(**{k: v for k, v in architecture.items() if k != "type"})
        if image_processor is not None:
            tower.image_processor = image_processor
        return tower
    raise ValueError(f"config.json: vision.type={kind!r} is not one of ['clip', 'qwen']")


def build_decoder_from_architecture(architecture: dict, attention: str) -> LlamaForCausalLM:
    if architecture.get("type") != "llama":
        raise ValueError(f"config.json: decoder.type={architecture.get('type')!r} is not 'llama'")
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"config.json: attention={attention!r} is not one of {ATTENTION_CHOICES}")
    model = LlamaForCausalLM._from_config(LlamaConfig.from_dict(architecture["llama_config"]), dtype=torch.float32)
    model.set_attn_implementation(ATTENTION_IMPLEMENTATIONS[attention])
    model.tie_weights()  # a no-op unless tie_word_embeddings; under no_init_weights transformers skips it
    return model


@contextmanager
def unpartitioned_construction() -> Iterator[None]:
    """Build whole (not ZeRO-3 partitioned) models even inside a process whose training run keeps
    an HfDeepSpeedConfig alive: transformers' `_from_config` consults that process-wide flag and
    would otherwise build empty shards (seen: export_checkpoint after a ZeRO-3 engine, every
    parameter of shape [0]). The flag is restored afterwards."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def build_model_from_config(config: DSVLConfig, image_processor=None):
    """A randomly initialised model of exactly the described architecture (weights load after);
    never partitioned (see `unpartitioned_construction`)."""
    from .dsvl import DSVLForConditionalGeneration  # dsvl imports this module

    with unpartitioned_construction():
        return DSVLForConditionalGeneration(config, image_processor=image_processor)


def build_parts(config: DSVLConfig, image_processor=None) -> tuple[VisionTower, nn.Module, LlamaForCausalLM]:
    """(vision, projection, decoder) of the described architecture, randomly initialised."""
    vision = build_vision_from_architecture(config.vision, image_processor)
    decoder = build_decoder_from_architecture(config.decoder, config.attention)
    settings = {k: v for k, v in config.projection.items() if k != "type"}
    projection = build_projection(config.projection["type"], vision, decoder.config.hidden_size, **settings)
    return vision, projection, decoder

"""Vision towers. Each returns visual features [num_images, num_tokens, hidden_size] and carries
the image processor that prepares its input."""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

try:  # the PIL processor: the default one wants torchvision, which this project does not need
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # older transformers
    from transformers import CLIPImageProcessor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_image_processor(image_size: int, resample: int = 3) -> CLIPImageProcessor:
    """CLIP preprocessing (resize shortest side, center crop, CLIP mean/std), built offline."""
    return CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        resample=resample,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    )


class CLIPVisionTower(nn.Module):
    """A HF `CLIPVisionModel`; features from `feature_layer` (-1: last hidden state, CLS kept,
    as DeepSpeed-VisualChat; -2: the penultimate layer, as LLaVA)."""

    def __init__(self, model: CLIPVisionModel, image_processor: CLIPImageProcessor, feature_layer: int = -1):
        super().__init__()
        self.model = model
        self.image_processor = image_processor
        self.feature_layer = feature_layer
        config = model.config
        if not -config.num_hidden_layers <= feature_layer < 0:
            raise ValueError(
                f"vision.feature_layer={feature_layer} is outside [-{config.num_hidden_layers}, -1] "
                f"for a {config.num_hidden_layers}-layer encoder"
            )
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.intermediate_size = config.intermediate_size
        self.hidden_act = config.hidden_act
        self.num_tokens = (config.image_size // config.patch_size) ** 2 + 1
        self.image_size = config.image_size
        self.has_cls_token = True
        self.resamples = False
        self.lora_target_modules = ["q_proj", "k_proj", "v_proj", "out_proj"]

    def architecture(self) -> dict:
        return {"type": "clip", "clip_config": self.model.config.to_dict(), "feature_layer": self.feature_layer}

    def gradient_checkpointing_enable(self) -> None:
        self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.model.dtype)
        if self.feature_layer == -1:
            return self.model(pixel_values=pixel_values).last_hidden_state
        outputs = self.model(pixel_values=pixel_values, output_hidden_states=True)
        return outputs.hidden_states[self.feature_layer]


def build_clip_vision_tower(
    pretrained: str | None = None,
    image_size: int = 224,
    patch_size: int = 14,
    hidden_size: int = 1024,
    num_layers: int = 24,
    num_heads: int = 16,
    intermediate_size: int = 4096,
    feature_layer: int = -1,
) -> CLIPVisionTower:
    """From `pretrained` (a local HF folder or hub name) when given, otherwise randomly
    initialised from the architecture values."""
    if pretrained:
        model = CLIPVisionModel.from_pretrained(pretrained)
        try:
            processor = CLIPImageProcessor.from_pretrained(pretrained)
        except OSError:
            processor = clip_image_processor(model.config.image_size)
    else:
        config = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                                  num_hidden_layers=num_layers, num_attention_heads=num_heads,
                                  intermediate_size=intermediate_size)
        model = CLIPVisionModel._from_config(config)  # HF init; under ZeRO-3 built partitioned
        processor = clip_image_processor(image_size)
    return CLIPVisionTower(model, processor, feature_layer)

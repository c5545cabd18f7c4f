"""The run's model on the meta device: full size, no weights, built by the recipe's own
`build_model` / `configure_training` (so freezing, LoRA and gradient checkpointing are the
run's). A `pretrained` part contributes only its architecture: read from a local folder's
config.json, or from the public sizes below for the hub names the reference uses (no download)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from dsvl_exp.constants import IMAGE_TOKEN
from dsvl_exp.errors import UserError

# Architecture values of the public checkpoints (their config.json), as this project's keys.
KNOWN_VISION = {
    "openai/clip-vit-large-patch14": dict(image_size=224, patch_size=14, hidden_size=1024, num_layers=24, num_heads=16,
                                          intermediate_size=4096),
    "openai/clip-vit-large-patch14-336": dict(image_size=336, patch_size=14, hidden_size=1024, num_layers=24,
                                              num_heads=16, intermediate_size=4096),
}
LLAMA_2 = {
    "7b": dict(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32, intermediate_size=11008),
    "13b": dict(hidden_size=5120, num_layers=40, num_heads=40, num_kv_heads=40, intermediate_size=13824),
    "70b": dict(hidden_size=8192, num_layers=80, num_heads=64, num_kv_heads=8, intermediate_size=28672),
}
KNOWN_DECODERS = {f"meta-llama/Llama-2-{size}{suffix}": dict(values, vocab_size=32000)
                  for size, values in LLAMA_2.items() for suffix in ("-hf", "-chat-hf")}
# "### Image:", "<image>" and "<PAD>" (LLaMA-2 has no pad token): models/tokenizer.py
ADDED_TOKENS_WITHOUT_PAD = 3


@dataclass(frozen=True)
class Vocabulary:
    """What `build_model` reads of a tokenizer, when the tokenizer itself cannot be loaded
    offline (a hub name): the size and the ids (their values do not change any size)."""

    size: int
    pad_token_id: int = 0
    eos_token_id: int = 2

    def __len__(self) -> int:
        return self.size

    def convert_tokens_to_ids(self, token: str) -> int:
        assert token == IMAGE_TOKEN
        return self.size - 2


def _local_config(path: str) -> dict | None:
    file = Path(path).expanduser() / "config.json"
    return json.loads(file.read_text()) if file.is_file() else None


def vision_architecture(pretrained: str) -> dict:
    local = _local_config(pretrained)
    if local is not None:
        vision = local.get("vision_config", local)
        return dict(image_size=vision["image_size"], patch_size=vision["patch_size"], hidden_size=vision["hidden_size"],
                    num_layers=vision["num_hidden_layers"], num_heads=vision["num_attention_heads"],
                    intermediate_size=vision["intermediate_size"])
    if pretrained in KNOWN_VISION:
        return KNOWN_VISION[pretrained]
    raise UserError(f"vision.pretrained={pretrained}: plan reads the architecture from a local folder's config.json "
                    f"or knows {', '.join(KNOWN_VISION)}; point it at a local folder, or set vision.pretrained=null "
                    "with the architecture values (vision.hidden_size=..., see conf/vision/clip.yaml)")


def decoder_architecture(pretrained: str) -> dict:
    local = _local_config(pretrained)
    if local is not None:
        return dict(hidden_size=local["hidden_size"], num_layers=local["num_hidden_layers"],
                    num_heads=local["num_attention_heads"],
                    num_kv_heads=local.get("num_key_value_heads") or local["num_attention_heads"],
                    intermediate_size=local["intermediate_size"], vocab_size=local["vocab_size"])
    if pretrained in KNOWN_DECODERS:
        return KNOWN_DECODERS[pretrained]
    raise UserError(f"decoder.pretrained={pretrained}: plan reads the architecture from a local folder's config.json "
                    f"or knows the LLaMA-2 hub names (meta-llama/Llama-2-7b-hf, -13b-hf, -70b-hf); point it at a local "
                    "folder, or set decoder.pretrained=null with the architecture values (decoder.hidden_size=...)")


def architecture_config(cfg: DictConfig) -> tuple[DictConfig, int | None]:
    """A copy of `cfg` whose model groups build the pretrained parts' architectures from scratch,
    and the pretrained decoder's vocabulary size (None when the decoder is built from values)."""
    arch = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    pretrained_vocab = None
    with open_dict(arch):
        if cfg.vision.pretrained and "hidden_size" in cfg.vision:  # CLIP; the Qwen tower takes its values as given
            arch.vision.update(vision_architecture(cfg.vision.pretrained))
        arch.vision.pretrained = None
        if cfg.decoder.pretrained:
            values = dict(decoder_architecture(cfg.decoder.pretrained))
            pretrained_vocab = values.pop("vocab_size")
            arch.decoder.update(values)
        arch.decoder.pretrained = None
    return arch, pretrained_vocab


def run_vocabulary(cfg: DictConfig, pretrained_vocab: int | None):
    """The run's tokenizer when it loads offline (the bundled one, a local folder), else its size."""
    from hydra.utils import instantiate

    try:
        return instantiate(cfg.tokenizer)
    except Exception:  # a hub name without a local copy: the size is all a plan needs
        if pretrained_vocab is None:
            raise UserError(f"tokenizer.path={cfg.tokenizer.path} cannot be loaded offline; plan needs its "
                            "vocabulary size: point tokenizer.path at a local folder") from None
        return Vocabulary(pretrained_vocab + ADDED_TOKENS_WITHOUT_PAD)


def meta_model(cfg: DictConfig, tokenizer):
    """The run's DSVLModel on the meta device, with the run's freezing, LoRA and checkpointing."""
    from dsvl_exp.training.model_setup import build_model, configure_training

    arch, _ = architecture_config(cfg)
    with torch.device("meta"):
        model = build_model(arch, tokenizer)
        configure_training(model, cfg)  # `auto` decisions read the real cfg's pretrained paths
    return model

"""DeepSpeed-VisualChat checkpoints -> a DSVLModel.

The reference saves one `DeepSpeedViLModel` state dict (`pytorch_model.bin`, LoRA already fused
into the base weights) with keys `vis_encoder.*`, `projection.*`, `lang_embed.*`,
`lang_decoder.*`. The architecture comes from the HF folders the reference was trained from
(`--vision`, `--decoder`) and from the checkpoint's own shapes; every tensor of the checkpoint
must land on exactly one parameter of the model, or the import fails listing the leftovers.

Mapping (reference -> dsvl_exp):
    vis_encoder.[vision_model.]*       vision.model.*       (HF 4.33's CLIPVisionModel had the extra level)
    vis_encoder.* (conv1, attn_pool)   vision.model.*       (the Qwen-VL tower: same names)
    projection.0 / .1                  projection.linear / .norm                        (baseline)
    projection.vis_layer.*             projection.encoder_layer.*                       (vit)
    projection.projection.0 / .1       projection.linear / .norm (vit), projection.out.0 / .1 (perceiver)
    projection.{query,pos_embed,kv_proj,attn,ln_q,ln_kv}   the same names               (perceiver)
    lang_embed.weight                  decoder.model.embed_tokens.weight  (the table the reference's forward used)
    lang_decoder.*                     decoder.*            (its own embed_tokens dropped, see below)
Dropped, counted and logged: buffers that newer transformers recompute (`*.position_ids`,
`*.rotary_emb.inv_freq`) and the reference's LoRA factors (`lora_right_weight`/`lora_left_weight`),
which its save path had already fused into the base weights."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from dsvl_exp.errors import UserError
from dsvl_exp.models.config import DSVLConfig

log = logging.getLogger(__name__)

PROJECTION_RENAMES = {
    "baseline": [(r"^projection\.0\.", "projection.linear."), (r"^projection\.1\.", "projection.norm.")],
    "vit": [(r"^projection\.vis_layer\.", "projection.encoder_layer."),
            (r"^projection\.projection\.0\.", "projection.linear."),
            (r"^projection\.projection\.1\.", "projection.norm.")],
    "perceiver": [(r"^projection\.projection\.", "projection.out.")],
}
RECOMPUTED_BUFFERS = re.compile(r"(\.position_ids|\.rotary_emb\.inv_freq)$")
FUSED_LORA = re.compile(r"\.lora_(right|left)_weight$")
DECODER_TABLE = "lang_decoder.model.embed_tokens.weight"


class ReferenceImportError(UserError, ValueError):
    """A reference checkpoint that does not fit the described model (message names the fix)."""


def load_reference_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """safetensors, or a torch pickle read with weights_only=True (tensors only, no code)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ReferenceImportError(f"--from-dsvl {path}: no such file (the reference's pytorch_model.bin or a .safetensors)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "module" in state and isinstance(state["module"], dict):
        state = state["module"]  # a DeepSpeed model-states file
    return state


def map_reference_keys(state: dict[str, torch.Tensor], projection: str) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """(this project's state dict, {reason: count} of what was dropped)."""
    if projection not in PROJECTION_RENAMES:
        raise ReferenceImportError(f"--projection {projection!r} is not one of {sorted(PROJECTION_RENAMES)}")
    mapped: dict[str, torch.Tensor] = {}
    dropped = {"recomputed buffers": 0, "fused LoRA factors": 0, "decoder's unused input table": 0}
    for key, value in state.items():
        if RECOMPUTED_BUFFERS.search(key):
            dropped["recomputed buffers"] += 1
            continue
        if FUSED_LORA.search(key):
            dropped["fused LoRA factors"] += 1
            continue
        if key == DECODER_TABLE:
            dropped["decoder's unused input table"] += 1
            continue
        if key == "lang_embed.weight":
            new = "decoder.model.embed_tokens.weight"
        elif key.startswith("vis_encoder."):
            new = "vision.model." + key.removeprefix("vis_encoder.").removeprefix("vision_model.")
        elif key.startswith("lang_decoder."):
            new = "decoder." + key.removeprefix("lang_decoder.")
        elif key.startswith("projection."):
            new = key
            for pattern, replacement in PROJECTION_RENAMES[projection]:
                new = re.sub(pattern, replacement, new)
        else:
            new = key  # reported as unexpected
        mapped[new] = value
    return mapped, dropped


def warn_on_diverged_tables(state: dict[str, torch.Tensor]) -> bool:
    """The reference trains `lang_embed` (a copy) but its HF `generate` embeds generated tokens
    with the decoder's own, untrained table; dsvl_exp has one table (`lang_embed`'s)."""
    if "lang_embed.weight" not in state or DECODER_TABLE not in state:
        return False
    if torch.equal(state["lang_embed.weight"], state[DECODER_TABLE]):
        return False
    log.warning("%s differs from lang_embed.weight (as in any trained reference checkpoint): the import uses "
                "lang_embed (the table the reference's forward embedded every input token with) for every token; "
                "the reference's own generate embedded generated tokens with the other, untrained table, so its "
                "generations after the first token can differ", DECODER_TABLE)
    return True


def qwen_architecture(state: dict[str, torch.Tensor], image_size: int, heads: int) -> dict:
    """The Qwen-VL tower's sizes from the checkpoint's shapes (heads are not in any shape)."""
    conv = state["vis_encoder.conv1.weight"]
    layers = len({k.split(".")[3] for k in state if k.startswith("vis_encoder.transformer.resblocks.")})
    query = state["vis_encoder.attn_pool.query"]
    return {"type": "qwen", "image_size": image_size, "patch_size": conv.shape[-1], "width": conv.shape[0],
            "layers": layers, "heads": heads, "mlp_size": state["vis_encoder.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "output_dim": query.shape[1], "num_queries": query.shape[0]}


def describe_reference_model(state: dict[str, torch.Tensor], vision_dir: str, decoder_dir: str, tokenizer,
                             projection: str, attention: str, image_order: str) -> tuple[DSVLConfig, object]:
    """(the DSVLConfig of the checkpoint's model, its image processor)."""
    from transformers import CLIPVisionConfig, LlamaConfig

    from dsvl_exp.models.tokenizer import image_token_id
    from dsvl_exp.models.vision import CLIPImageProcessor, clip_image_processor

    if "lang_embed.weight" not in state:
        raise ReferenceImportError("the checkpoint has no lang_embed.weight: not a DeepSpeed-VisualChat DeepSpeedViLModel state dict")
    vision_folder = Path(vision_dir).expanduser()
    vision_config = CLIPVisionConfig.from_pretrained(str(vision_folder))
    has_processor = (vision_folder / "preprocessor_config.json").is_file()
    if "vis_encoder.conv1.weight" in state:  # the Qwen-VL tower ("qwen-clip")
        processor = CLIPImageProcessor.from_pretrained(str(vision_folder)) if has_processor else clip_image_processor(448)
        image_size = processor.crop_size["height"]
        vision = qwen_architecture(state, image_size, vision_config.num_attention_heads)
    else:
        processor = CLIPImageProcessor.from_pretrained(str(vision_folder)) if has_processor else clip_image_processor(vision_config.image_size)
        vision = {"type": "clip", "clip_config": vision_config.to_dict(), "feature_layer": -1}
    vocab_size = state["lang_embed.weight"].shape[0]
    if len(tokenizer) != vocab_size:
        raise ReferenceImportError(f"the tokenizer has {len(tokenizer)} tokens once <image> etc. are added but lang_embed has "
                           f"{vocab_size} rows; pass the tokenizer the checkpoint was trained with (--tokenizer)")
    llama = LlamaConfig.from_pretrained(str(Path(decoder_dir).expanduser()))
    llama.vocab_size = vocab_size
    settings = {"num_queries": state["projection.query"].shape[0]} if projection == "perceiver" else {}
    config = DSVLConfig(
        vision=vision, projection={"type": projection, **settings},
        decoder={"type": "llama", "llama_config": llama.to_dict()}, attention=attention, image_order=image_order,
        image_token_id=image_token_id(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return config, processor


def import_reference_checkpoint(checkpoint: str | Path, vision_dir: str, decoder_dir: str, tokenizer, projection: str,
                                attention: str, image_order: str):
    """The DSVLModel holding the reference checkpoint's weights, in the checkpoint's dtype."""
    from transformers.initialization import no_init_weights

    from dsvl_exp.models.build import build_model_from_config

    state = load_reference_state_dict(checkpoint)
    config, processor = describe_reference_model(state, vision_dir, decoder_dir, tokenizer, projection, attention, image_order)
    warn_on_diverged_tables(state)
    mapped, dropped = map_reference_keys(state, projection)
    with no_init_weights():
        model = build_model_from_config(config, processor)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    wrong = sorted(k for k in set(expected) & set(mapped) if tuple(expected[k].shape) != tuple(mapped[k].shape))
    if missing or unexpected or wrong:
        def listing(keys):
            return f"{len(keys)} {keys[:12]}{' ...' if len(keys) > 12 else ''}"
        raise ReferenceImportError(
            f"{checkpoint} does not fit --projection {projection} with --vision {vision_dir} / --decoder {decoder_dir}: "
            f"missing {listing(missing)}; unexpected {listing(unexpected)}; shape mismatch "
            f"{[(k, tuple(mapped[k].shape), tuple(expected[k].shape)) for k in wrong[:6]]}. Check --projection and "
            "that the HF folders are the ones the checkpoint was trained from")
    for reason, count in dropped.items():
        if count:
            log.info("dropped %d %s", count, reason)
    floating = [v.dtype for v in mapped.values() if v.is_floating_point()]
    model.to(max(set(floating), key=floating.count))
    model.load_state_dict(mapped, strict=True)
    return model.eval(), dropped

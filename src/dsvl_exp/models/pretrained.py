"""A self-contained model folder: `save_pretrained` writes it, `from_pretrained` rebuilds the
model from it offline, with no run config.

    config.json                  the whole model (models/config.py), with the Auto classes' `auto_map`
    *.py                         the model code (dsvl.py and what it imports, processing.py), for
                                 transformers' `trust_remote_code=True`: no dsvl_exp needed to load it
    model.safetensors            weights; above `max_shard_size` model-0000k-of-0000n.safetensors + index
    preprocessor_config.json     the vision tower's image processor
    tokenizer files              when a tokenizer was given (load with models.tokenizer.load_tokenizer)
    processor_config.json,       DSVLProcessor and its chat template (AutoProcessor), when a
    chat_template.jinja          tokenizer was given
    adapters/<part>/             peft adapters (adapter_config.json + adapter_model.safetensors), only
                                 when written with keep_adapters=True; otherwise LoRA is merged
    README.md                    what the model is and how it was trained

Weights are read with safetensors only (no pickle); `DSVLModel.from_pretrained` executes nothing
from the folder (the code files there are for transformers' Auto classes)."""

from __future__ import annotations

import json
import logging
import shutil
import os
from pathlib import Path

import torch
from huggingface_hub import load_torch_model, save_torch_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from dsvl_exp.errors import BadFileError, MissingFileError
from dsvl_exp.models.config import FORMAT_VERSION, DSVLConfig
from dsvl_exp.models.lora import lora_scalings, merge_lora_state_dict, split_adapters
from dsvl_exp.models.processing import DSVLProcessor
from dsvl_exp.models.vision import CLIPImageProcessor

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PROCESSOR_FILE = "preprocessor_config.json"
ADAPTERS_DIR = "adapters"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DEFAULT_MAX_SHARD_SIZE = "5GB"


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu() for key, value in model.state_dict().items()}


def save_pretrained(model, out_dir: str | Path, *, state_dict: dict | None = None, tokenizer=None,
                    keep_adapters: bool = False, training_summary: dict | None = None,
                    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> Path:
    """Write the folder. `state_dict`: the full (gathered) weights when `model` itself is
    partitioned (ZeRO-3); by default the model's own. LoRA adapters are merged into the base
    weights unless `keep_adapters`."""
    from dsvl_exp.models.build import model_config  # build imports dsvl, which imports this module

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = cpu_state_dict(model) if state_dict is None else state_dict
    config = model_config(model)
    scalings = lora_scalings(model)
    if scalings and keep_adapters:
        state, adapters = split_adapters(state, scalings)
        for part, tensors in sorted(adapters.items()):
            folder = out / ADAPTERS_DIR / part
            folder.mkdir(parents=True, exist_ok=True)
            getattr(model, part).peft_config["default"].save_pretrained(str(folder))
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / ADAPTER_WEIGHTS))
        config.adapters = sorted(adapters)
    elif scalings:
        state = merge_lora_state_dict(state, scalings)
        log.info("merged %d LoRA layers into the exported weights", len(scalings))
    floating = [value.dtype for value in state.values() if value.is_floating_point()]
    if floating:
        config.dtype = str(max(set(floating), key=floating.count)).removeprefix("torch.")
    save_torch_state_dict(state, str(out), max_shard_size=max_shard_size)
    write_model_code(out, config)
    config.save(out / CONFIG_FILE)
    model.vision.image_processor.save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
        processor = DSVLProcessor(image_processor=model.vision.image_processor, tokenizer=tokenizer,
                                  tokens_per_image=model.tokens_per_image)
        processor.register_for_auto_class("AutoProcessor")
        processor.save_pretrained(str(out))
    (out / "README.md").write_text(model_card(config, training_summary))
    readable_by_all(out)
    return out


AUTO_MAP = {
    "AutoConfig": "config.DSVLConfig",
    "AutoModelForImageTextToText": "dsvl.DSVLForConditionalGeneration",
    "AutoModelForCausalLM": "dsvl.DSVLForConditionalGeneration",
    "AutoProcessor": "processing.DSVLProcessor",
}


def model_code_files() -> list[Path]:
    """The files that travel: dsvl.py, processing.py and everything they import relatively."""
    from transformers.dynamic_module_utils import get_relative_import_files

    here = Path(__file__).resolve().parent
    files = {here / "dsvl.py", here / "processing.py"}
    for entry in list(files):
        files.update(Path(f) for f in get_relative_import_files(str(entry)))
    return sorted(files)


def write_model_code(out: Path, config) -> None:
    for source in model_code_files():
        shutil.copyfile(source, out / source.name)
    config.auto_map = dict(AUTO_MAP)
    config.architectures = ["DSVLForConditionalGeneration"]


def readable_by_all(folder: Path) -> None:
    """Files as the umask allows (0644 under 022), folders likewise: safetensors writes its weights
    through a private temporary file (0600), which other users of a shared file system cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def from_pretrained(path: str | Path, dtype: torch.dtype | str | None = None):
    """Rebuild the model of a folder written by `save_pretrained`, in eval mode, in the saved
    dtype unless `dtype` is given."""
    from transformers.initialization import no_init_weights

    from dsvl_exp.models.build import build_model_from_config

    folder = Path(path).expanduser()
    if not (folder / CONFIG_FILE).is_file():
        raise MissingFileError(f"{folder} holds no {CONFIG_FILE}: not a dsvl_exp model folder (write one with "
                               "`python -m dsvl_exp.export RUN_DIR --out DIR` or DSVLModel.save_pretrained)")
    config = DSVLConfig.load(folder / CONFIG_FILE)
    if config.format_version < FORMAT_VERSION:
        log.warning("%s is an export of format %d: dsvl_exp loads it, transformers' Auto classes cannot (it holds no "
                    "model code); rewrite it with `python -m dsvl_exp.export %s --out NEW_FOLDER`",
                    folder, config.format_version, folder)
    processor = CLIPImageProcessor.from_pretrained(str(folder)) if (folder / PROCESSOR_FILE).is_file() else None
    # every weight is overwritten below: skip the random initialisation (minutes for a 7B decoder)
    with no_init_weights():
        model = build_model_from_config(config, processor)
    load_weights_strictly(model, folder)
    for part in config.adapters:
        load_adapters(getattr(model, part), folder / ADAPTERS_DIR / part, part)
    target = dtype if dtype is not None else config.dtype
    model.to(getattr(torch, target) if isinstance(target, str) else target)
    return model.eval()


def load_weights_strictly(model: nn.Module, folder: Path) -> None:
    """Every parameter gets a value and every saved tensor a parameter. The one exception is a
    tied weight (e.g. a decoder with tie_word_embeddings): safetensors stores a shared tensor once,
    and the model's other name for it is filled through the tie."""
    result = load_torch_model(model, str(folder), strict=False, safe=True)
    loaded_storage = {t.data_ptr() for k, t in model.state_dict().items() if k not in set(result.missing_keys)}
    own = model.state_dict()
    missing = [k for k in result.missing_keys if own[k].data_ptr() not in loaded_storage]
    if missing or result.unexpected_keys:
        raise BadFileError(f"{folder}: the weights do not fit its config.json: missing {missing[:10]} ({len(missing)}), "
                         f"unexpected {list(result.unexpected_keys)[:10]} ({len(result.unexpected_keys)})")


def load_adapters(module: nn.Module, folder: Path, part: str) -> None:
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    config = LoraConfig.from_pretrained(str(folder))
    inject_adapter_in_model(config, module)
    state = load_file(str(folder / ADAPTER_WEIGHTS))
    result = set_peft_model_state_dict(module, state)
    adapter_keys = {name for name, _ in module.named_parameters() if "lora_" in name}
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected or len(state) != len(adapter_keys):
        raise BadFileError(f"{folder}: the {part} adapters do not fit the model: unexpected {unexpected[:5]}, "
                         f"{len(state)} tensors for {len(adapter_keys)} adapter parameters")


def model_card(config: DSVLConfig, training_summary: dict | None) -> str:
    vision = config.vision
    vision_line = (f"CLIP ({vision['clip_config'].get('hidden_size')} wide, {vision['clip_config'].get('num_hidden_layers')} "
                   f"layers, feature layer {vision.get('feature_layer')})" if vision["type"] == "clip"
                   else f"Qwen-VL tower ({vision.get('width')} wide, {vision.get('layers')} layers)")
    llama = config.decoder["llama_config"]
    lines = [
        "# DSVL model (dsvl_exp)",
        "",
        "A DeepSpeed-VisualChat-style model: vision tower -> projection -> LLaMA decoder.",
        "",
        "Loads with transformers alone (torch, transformers, safetensors, pillow); the model code is in this folder:",
        "",
        "```python",
        "from PIL import Image",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "model = AutoModelForImageTextToText.from_pretrained(FOLDER, trust_remote_code=True)",
        "processor = AutoProcessor.from_pretrained(FOLDER, trust_remote_code=True)",
        'messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in image 1?"}]}]',
        "prompt = processor.apply_chat_template(messages, add_generation_prompt=True)",
        'inputs = processor(text=prompt, images=[Image.open("picture.png")])',
        "new_ids = model.generate(**inputs, max_new_tokens=64)[:, inputs[\"input_ids\"].shape[1]:]",
        "print(processor.batch_decode(new_ids, skip_special_tokens=True)[0])",
        "```",
        "",
        "With dsvl_exp installed: `dsvl_exp.DSVLModel.from_pretrained(FOLDER)` and `python -m dsvl_exp.chat FOLDER`.",
        "",
        f"- vision: {vision_line}",
        f"- projection: {config.projection['type']} ({config.tokens_per_image} visual tokens per image)",
        f"- decoder: LLaMA, {llama.get('hidden_size')} wide, {llama.get('num_hidden_layers')} layers, "
        f"vocabulary {llama.get('vocab_size')}, attention {config.attention}",
        f"- image order: {config.image_order}; weights {config.dtype}"
        + (f"; peft adapters kept for {', '.join(config.adapters)}" if config.adapters else ""),
        "",
    ]
    if training_summary:
        lines += ["## How it was trained", "", "```json", json.dumps(training_summary, indent=2, default=str), "```", ""]
    return "\n".join(lines)

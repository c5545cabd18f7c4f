"""Activation memory of one micro-batch, derived from the tensors the real model saves for
backward (`torch.autograd.graph.saved_tensors_hooks`), not from a rule of thumb.

The run's model is built with two layers per stack (vision tower, decoder) under
`FakeTensorMode`: tensors carry shapes, dtypes and the CPU device (so attention dispatches to the
same fused SDPA kernel as a real step) but no storage, so a forward at the run's real micro-batch
and sequence length costs milliseconds even for 13B widths. Every saved tensor is counted once
(views of one tensor and tensors saved by several ops share it), parameters are not
activations. The second layer of a stack gives the bytes per layer; what the first layer saves
beyond that is shared by all layers (the rotary tables, MMCA's masks and index plans); the
stack's total is `shared + layers x per layer`. With gradient checkpointing a checkpointed
layer keeps only its input, and backward recomputes one layer at a time, so the stack holds
`layers x input + one layer's saved tensors`.

The forward below follows `DSVLModel.forward` part by part (vision, projection, splice into
the text embeddings, decoder body, LM head on the supervised positions); the splice's own saved
tensors are integer indices and are left out. tests/test_plan_activations.py checks the
estimate against the bytes saved in a real step on CPU (within 10 %).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from dsvl_exp.models import mmca

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LAYER_KEYS = {"vision": ("num_layers", "layers"), "decoder": ("num_layers",)}


@dataclass(frozen=True)
class BatchShape:
    """One micro-batch as the decoder sees it: `rows` sequences padded to `length` positions,
    each with `images_per_row` images and `supervised_per_row` labelled positions."""

    rows: int
    length: int
    images_per_row: int
    supervised_per_row: int


@dataclass(frozen=True)
class ActivationBytes:
    parts: dict[str, int]  # vision, projection, decoder layers, decoder shared (masks, rotary), head + loss
    checkpointed: bool

    @property
    def total(self) -> int:
        return sum(self.parts.values())


class SavedTensorCounter:
    """Bytes of the tensors saved for backward, each storage once, per tag (set by the caller)."""

    def __init__(self, parameters):
        self.parameter_ids = {id(p) for p in parameters}
        self.seen: dict[int, torch.Tensor] = {}
        self.bytes: dict[str, int] = defaultdict(int)
        self.tag = "other"

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in self.parameter_ids and id(base) not in self.seen:
            self.seen[id(base)] = base  # keep it alive: ids of freed tensors are reused
            self.bytes[self.tag] += base.numel() * base.element_size()
        return tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)


def layer_stack(module: nn.Module) -> nn.ModuleList:
    """The part's stack of transformer layers: its longest ModuleList (the most parameters on a tie)."""
    lists = [m for m in module.modules() if isinstance(m, nn.ModuleList) and len(m)]
    return max(lists, key=lambda m: (len(m), sum(p.numel() for p in m.parameters())))


def probe_config(arch: DictConfig) -> tuple[DictConfig, dict[str, int]]:
    """`arch` with two layers per stack, and the real number of layers of each."""
    probe = OmegaConf.create(OmegaConf.to_container(arch, resolve=True))
    layers = {}
    with open_dict(probe):
        probe.train.gradient_checkpointing = False
        for part, keys in LAYER_KEYS.items():
            key = next(k for k in keys if k in probe[part])
            layers[part] = int(probe[part][key])
            probe[part][key] = min(2, layers[part])
    return probe, layers


def token_types(shape: BatchShape, tokens_per_image: int) -> torch.Tensor:
    """1 text / 2 image per position: the images spread through each row's prompt, the answer last."""
    types = torch.ones(shape.rows, shape.length, dtype=torch.long)
    image_positions = shape.images_per_row * tokens_per_image
    text = shape.length - image_positions
    for k in range(shape.images_per_row):
        start = 1 + k * (text // (2 * max(shape.images_per_row, 1))) + k * tokens_per_image
        types[:, start:start + tokens_per_image] = 2
    return types


def _fake_plan(fake_mode, types: torch.Tensor, dtype):
    """MMCA's gathered plan depends on the token types' values (index sizes), which fake tensors
    do not have: build it on the real small int tensors, then hand its tensors over as fakes."""
    plan = mmca.gathered_plan(types, types.shape[1], dtype)

    def convert(value):
        if isinstance(value, torch.Tensor):
            return fake_mode.from_tensor(value)
        if isinstance(value, list):  # the key-prefix chunks (models/mmca_prefix.py)
            return [convert(item) for item in value]
        if dataclasses.is_dataclass(value):
            return dataclasses.replace(value, **{f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)})
        return value
    return convert(plan)


def measure(cfg: DictConfig, arch: DictConfig, tokenizer, shape: BatchShape, precision: str) -> tuple[dict, dict, dict]:
    """Saved bytes per tag of the two-layer model's forward, the input bytes of one layer of each
    stack, and the real layer counts."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from dsvl_exp.training.model_setup import build_model, configure_training

    probe, layers = probe_config(arch)
    train_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(train_cfg):
        train_cfg.train.gradient_checkpointing = False
    dtype = DTYPES[precision]
    with torch.device("meta"):  # peft cannot inject adapters under FakeTensorMode: build first
        model = build_model(probe, tokenizer)
        configure_training(model, train_cfg)
    model.to(dtype)  # as the engine casts the whole module (buffers too) for fp16 / bf16
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with fake_mode:
        model.to_empty(device="cpu")  # fake CPU tensors: shapes and dtypes, no storage
        model.train()
    types = token_types(shape, model.tokens_per_image)
    plan = _fake_plan(fake_mode, types, dtype) if model.decoder.config._attn_implementation == "mmca" else None
    with fake_mode:
        return _forward(model, shape, dtype, fake_mode.from_tensor(types), plan), layers


def _forward(model, shape: BatchShape, dtype, types: torch.Tensor, plan) -> tuple[dict, dict]:
    counter = SavedTensorCounter(model.parameters())
    layer_inputs: dict[str, int] = {}

    def tag_layers(part: str, stack: nn.ModuleList):
        for index, layer in enumerate(stack):
            def pre_hook(module, args, kwargs, index=index):
                counter.tag = f"{part}_layer{index}"
                hidden = args[0] if args else next(iter(kwargs.values()))
                layer_inputs[part] = hidden.numel() * hidden.element_size()

            def post_hook(module, args, output):
                counter.tag = f"{part}_other"
            layer.register_forward_pre_hook(pre_hook, with_kwargs=True)
            layer.register_forward_hook(post_hook)

    tag_layers("vision", layer_stack(model.vision))
    tag_layers("decoder", layer_stack(model.decoder.get_decoder()))
    size = model.vision.image_processor.crop_size["height"] if hasattr(model.vision.image_processor, "crop_size") else None
    size = size or model.vision.architecture().get("image_size")
    images = torch.zeros(shape.rows * shape.images_per_row, 3, size, size, dtype=dtype)
    hidden_size = model.embed_tokens.embedding_dim
    text_length = shape.length - shape.images_per_row * model.tokens_per_image
    with counter.hooks():
        counter.tag = "vision_other"
        vision_trains = any(p.requires_grad for p in model.vision.parameters())
        with torch.set_grad_enabled(vision_trains):
            features = model.vision(images) if images.shape[0] else None
        counter.tag = "projection"
        image_embeds = model.projection(features.to(dtype)) if features is not None else None
        counter.tag = "decoder_other"
        text_embeds = model.embed_tokens(torch.zeros(shape.rows, text_length, dtype=torch.long))
        pieces = [text_embeds] + ([image_embeds.reshape(shape.rows, -1, hidden_size)] if image_embeds is not None else [])
        embeds = torch.cat(pieces, dim=1)  # the splice: positions differ, sizes do not
        if plan is not None:
            mmca.register_attention()  # the plan is seeded into this module's cache, not a loaded copy's
            mmca._cached(types, shape.length, dtype, False, lambda: plan)
        mask = {mmca.TOKEN_TYPES_KWARG: types} if model.uses_mmca else {}  # causal without padding: no mask
        positions = torch.arange(shape.length)[None].expand(shape.rows, -1)
        hidden = model.decoder.get_decoder()(inputs_embeds=embeds, position_ids=positions, use_cache=False,
                                             **mask).last_hidden_state
        counter.tag = "head"
        supervised = shape.rows * shape.supervised_per_row
        rows = torch.zeros(supervised, dtype=torch.long)
        logits = model.decoder.get_output_embeddings()(hidden.reshape(-1, hidden_size).index_select(0, rows))
        F.cross_entropy(logits.float(), rows)
    return dict(counter.bytes), layer_inputs


def activation_bytes(cfg: DictConfig, arch: DictConfig, tokenizer, shape: BatchShape, precision: str,
                     checkpointing: bool) -> ActivationBytes:
    (saved, inputs), layers = measure(cfg, arch, tokenizer, shape, precision)
    parts = {}
    for part in ("vision", "decoder"):
        first, second = saved.get(f"{part}_layer0", 0), saved.get(f"{part}_layer1", 0)
        per_layer = second if layers[part] > 1 else first
        shared = first - per_layer
        if checkpointing and per_layer:
            stack = layers[part] * inputs.get(part, 0) + per_layer
        else:
            stack = layers[part] * per_layer
        parts[f"{part} layers"] = stack
        parts[f"{part} shared (masks, rotary)" if part == "decoder" else f"{part} embeddings"] = shared + saved.get(f"{part}_other", 0)
        if part == "vision":
            parts["projection"] = saved.get("projection", 0)
    parts["LM head + loss"] = saved.get("head", 0)
    return ActivationBytes(parts, checkpointing)

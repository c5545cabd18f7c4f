"""plan's activation estimate (fake-tensor probe of two layers per stack, scaled by layers)
against an independent measurement in a real CPU step of the whole model: the bytes of every
tensor saved for backward by DSVLModel.forward (each storage once, parameters excluded).

With gradient checkpointing the measured figure is what the real checkpointed step keeps at the
end of forward (saved tensors outside the checkpointed layers, plus each checkpointed layer's
input) plus the largest single layer's saved bytes in the same step without checkpointing (what
backward recomputes at one time)."""

from __future__ import annotations

import sys
from collections import defaultdict

import pytest
import torch

from helpers import REPO

sys.path.insert(0, str(REPO / "scripts"))
import bench_train  # noqa: E402  (the benchmark presets and their batches)

from conftest import compose_config  # noqa: E402
from dsvl_exp.planning.activations import BatchShape, activation_bytes, layer_stack  # noqa: E402
from dsvl_exp.planning.architecture import Vocabulary, architecture_config  # noqa: E402

PRESET_OVERRIDES = {
    "tiny": (),
    "small": ("vision.image_size=224", "vision.patch_size=16", "vision.hidden_size=256", "vision.num_layers=4",
              "vision.num_heads=4", "vision.intermediate_size=1024", "decoder.hidden_size=512", "decoder.num_layers=8",
              "decoder.num_heads=8", "decoder.intermediate_size=1376"),
}


def storage_bytes(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def saved_bytes_of_step(model, batch) -> tuple[int, dict[str, int], int]:
    """(saved bytes of the whole forward, saved bytes per layer, bytes of the checkpointed layers' inputs)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, torch.Tensor] = {}
    per_tag: dict[str, int] = defaultdict(int)
    inputs: dict[int, int] = {}
    tag = ["other"]

    def pack(tensor):
        pointer, nbytes = storage_bytes(tensor)
        if pointer not in parameters and pointer not in seen:
            seen[pointer] = tensor
            per_tag[tag[0]] += nbytes
        return tensor

    handles = []
    for part, stack in (("vision", layer_stack(model.vision)), ("decoder", layer_stack(model.decoder.get_decoder()))):
        for index, layer in enumerate(stack):
            def pre(module, args, kwargs, name=f"{part}{index}"):
                tag[0] = name
                hidden = args[0] if args else next(iter(kwargs.values()))
                if hidden.requires_grad:  # a frozen stack under no_grad keeps nothing
                    inputs.setdefault(*storage_bytes(hidden))

            handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(layer.register_forward_hook(lambda *_: tag.__setitem__(0, "other")))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    loss.backward()
    for handle in handles:
        handle.remove()
    return sum(per_tag.values()), dict(per_tag), sum(inputs.values())


def measured(preset_name: str, attention: str, checkpointing: bool) -> int:
    preset = bench_train.PRESETS[preset_name]
    model = bench_train.build(preset, attention).train()
    batch = bench_train.make_batch(model, preset)
    total, per_layer, _ = saved_bytes_of_step(model, batch)
    if not checkpointing:
        return total
    largest_layer = max(v for k, v in per_layer.items() if k != "other")
    model.gradient_checkpointing_enable()
    kept, _, layer_inputs = saved_bytes_of_step(model, batch)
    return kept + layer_inputs + largest_layer


def estimated(preset_name: str, attention: str, checkpointing: bool) -> int:
    preset = bench_train.PRESETS[preset_name]
    cfg = compose_config(*PRESET_OVERRIDES[preset_name], f"decoder.attention={attention}", "train.vision=true",
                         "train.decoder=true", f"train.gradient_checkpointing={str(checkpointing).lower()}")
    arch, _ = architecture_config(cfg)
    vocabulary = Vocabulary(preset["vocab"]) if preset["vocab"] else bench_train_vocabulary()
    shape = BatchShape(rows=preset["batch"], length=preset["length"], images_per_row=preset["images_per_row"],
                       supervised_per_row=preset["supervised_per_row"])
    return activation_bytes(cfg, arch, vocabulary, shape, "fp32", checkpointing).total


def bench_train_vocabulary():
    from dsvl_exp.models.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("attention", ["causal", "mmca"])
def test_tiny_default_estimate_within_10_percent(attention, checkpointing):
    real, plan = measured("tiny", attention, checkpointing), estimated("tiny", attention, checkpointing)
    print(f"tiny {attention} checkpointing={checkpointing}: measured {real} B, plan {plan} B ({plan / real - 1:+.1%})")
    assert plan == pytest.approx(real, rel=0.10)


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_small_preset_estimate_within_10_percent(checkpointing):
    real, plan = measured("small", "causal", checkpointing), estimated("small", "causal", checkpointing)
    print(f"small causal checkpointing={checkpointing}: measured {real} B, plan {plan} B ({plan / real - 1:+.1%})")
    assert plan == pytest.approx(real, rel=0.10)

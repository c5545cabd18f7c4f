"""The Qwen-VL tower: Qwen-VL's parameter names, strict loading, extraction from a checkpoint."""

import json
import sys

import pytest
import torch
from safetensors.torch import save_file

from dsvl_exp.models.qwen_vit import build_qwen_vision_tower
from dsvl_exp.models.resampler import sincos_2d
from helpers import REPO, run_cli

TINY = dict(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_size=48, output_dim=64, num_queries=16)


def expected_names(layers: int) -> set[str]:
    """Qwen-VL's `transformer.visual.*` names (prefix stripped, `proj` dropped)."""
    names = {"conv1.weight", "positional_embedding", "ln_pre.weight", "ln_pre.bias", "ln_post.weight", "ln_post.bias",
             "attn_pool.query", "attn_pool.pos_embed", "attn_pool.kv_proj.weight", "attn_pool.attn.in_proj_weight",
             "attn_pool.attn.in_proj_bias", "attn_pool.attn.out_proj.weight", "attn_pool.attn.out_proj.bias",
             "attn_pool.ln_q.weight", "attn_pool.ln_q.bias", "attn_pool.ln_kv.weight", "attn_pool.ln_kv.bias"}
    for n in range(layers):
        for leaf in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.in_proj.weight", "attn.in_proj.bias",
                     "attn.out_proj.weight", "attn.out_proj.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                     "mlp.c_proj.weight", "mlp.c_proj.bias"):
            names.add(f"transformer.resblocks.{n}.{leaf}")
    return names


def test_names_shapes_and_output():
    tower = build_qwen_vision_tower(**TINY)
    state = tower.model.state_dict()
    assert set(state) == expected_names(2)
    assert state["conv1.weight"].shape == (32, 3, 8, 8)
    assert state["positional_embedding"].shape == (256, 32)  # Qwen-VL's fixed 16x16 table, resized
    assert state["transformer.resblocks.1.attn.in_proj.weight"].shape == (96, 32)
    assert state["attn_pool.kv_proj.weight"].shape == (64, 32)
    assert state["attn_pool.pos_embed"].shape == (16, 64) and not tower.model.attn_pool.pos_embed.requires_grad
    features = tower(torch.randn(3, 3, 32, 32))
    assert features.shape == (3, 16, 64) and tower.num_tokens == 16 and tower.hidden_size == 64
    assert tower.model.attn_pool.attn.num_heads == 1  # output_dim // 128, at least 1
    processor = tower.image_processor
    assert processor.crop_size == {"height": 32, "width": 32} and processor.resample == 3
    assert processor.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])


def test_sincos_matches_qwen_layout():
    """Rows run over (h, w) = (0,0), (0,1), (1,0), (1,1); the first half encodes w as
    [sin(w*omega), cos(w*omega)] with omega = [1, 0.01] for a 4-wide half."""
    table = sincos_2d(8, 2)
    w_one = torch.tensor([1.0, 0.01])
    assert torch.allclose(table[1], torch.cat([w_one.sin(), w_one.cos(), torch.tensor([0.0, 0.0, 1.0, 1.0])]))
    assert torch.allclose(table[2], torch.cat([torch.tensor([0.0, 0.0, 1.0, 1.0]), w_one.sin(), w_one.cos()]))


def fake_qwen_vl_checkpoint(folder, reference, sharded_format):
    """A Qwen-VL-Chat-like folder: visual tensors under transformer.visual., LLM tensors, proj."""
    folder.mkdir()
    visual = {f"transformer.visual.{k}": v.clone() for k, v in reference.state_dict().items()}
    visual["transformer.visual.proj"] = torch.randn(64, 64)
    llm = {"transformer.wte.weight": torch.randn(10, 8), "transformer.h.0.attn.c_attn.weight": torch.randn(24, 8),
           "lm_head.weight": torch.randn(10, 8)}
    keys = sorted(visual)
    shards = {"part-1": {**llm, **{k: visual[k] for k in keys[: len(keys) // 2]}},
              "part-2": {k: visual[k] for k in keys[len(keys) // 2:]}}
    weight_map = {}
    for name, tensors in shards.items():
        if sharded_format == "safetensors":
            file = f"model-{name}.safetensors"
            save_file(tensors, str(folder / file))
        else:
            file = f"pytorch_model-{name}.bin"
            torch.save(tensors, folder / file)
        weight_map.update({k: file for k in tensors})
    index = "model.safetensors.index.json" if sharded_format == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"visual": {"heads": 2, "image_size": 32}}))


@pytest.mark.parametrize("sharded_format,out_flag", [("safetensors", []), ("bin", ["--bin"])])
def test_extract_then_load_strictly(tmp_path, sharded_format, out_flag):
    torch.manual_seed(1)
    reference = build_qwen_vision_tower(**TINY).model.eval()
    source, output = tmp_path / "Qwen-VL-Chat", tmp_path / "qwen_vit"
    fake_qwen_vl_checkpoint(source, reference, sharded_format)
    run_cli([sys.executable, REPO / "scripts" / "extract_qwen_vl.py", source, output, *out_flag])
    assert (output / ("pytorch_model.bin" if out_flag else "model.safetensors")).exists()
    assert json.loads((output / "vision_config.json").read_text()) == TINY
    torch.manual_seed(2)  # a different random init: only the loaded weights can make outputs equal
    loaded = build_qwen_vision_tower(pretrained=str(output), **TINY).model.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), reference(images))


def test_wrong_architecture_names_the_fields(tmp_path):
    reference = build_qwen_vision_tower(**TINY).model
    save_file(reference.state_dict(), str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="vision.width/layers"):
        build_qwen_vision_tower(pretrained=str(tmp_path), **{**TINY, "layers": 3})

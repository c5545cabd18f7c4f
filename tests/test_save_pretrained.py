"""save_pretrained -> from_pretrained rebuilds the same model offline, with no run config."""

import json

import pytest
import torch
from torch import nn

from dsvl_exp.models.build import build_projection
from dsvl_exp.models.dsvl import DSVLModel
from dsvl_exp.models.lora import DECODER_TARGETS, add_lora
from dsvl_exp.models.tokenizer import load_tokenizer
from test_model import batch_for
from test_model_family import build


def logits_and_tokens(model, tokenizer):
    torch.manual_seed(1)
    batch = batch_for(tokenizer, model, ["red circle", "two"], [2, 1])
    with torch.no_grad():
        out = model.eval()(**batch)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    prompt = torch.tensor([[tokenizer.bos_token_id, image_id, 30, 31]])
    tokens = model.generate(batch["images"][:1], prompt, torch.ones_like(prompt), [1], max_new_tokens=5)
    return out.loss, out.logits, tokens


@pytest.mark.parametrize("vision,projection,attention", [
    ("clip", "baseline", "causal"), ("clip", "vit", "mmca"), ("clip", "perceiver", "mmca_legacy"), ("qwen", "baseline", "causal"),
])
def test_round_trip_is_exact(tokenizer, tmp_path, vision, projection, attention):
    model = build(tokenizer, vision, projection, attention)
    model.image_order = "reversed_legacy"
    model.save_pretrained(tmp_path, tokenizer=tokenizer, training_summary={"steps": 3})
    loaded = DSVLModel.from_pretrained(tmp_path)
    assert type(loaded.vision) is type(model.vision) and loaded.image_order == "reversed_legacy"
    assert loaded.uses_mmca == (attention != "causal") and loaded.tokens_per_image == model.tokens_per_image
    expected, got = logits_and_tokens(model, tokenizer), logits_and_tokens(loaded, tokenizer)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1]) and expected[2] == got[2]
    # the folder is self-contained: processor and tokenizer come back from it
    assert loaded.vision.image_processor.to_dict()["crop_size"] == model.vision.image_processor.to_dict()["crop_size"]
    reloaded_tokenizer = load_tokenizer(str(tmp_path))
    assert reloaded_tokenizer.get_vocab() == tokenizer.get_vocab() and len(reloaded_tokenizer) == len(tokenizer)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["projection"]["type"] == projection and config["attention"] == attention
    assert config["image_token_id"] == tokenizer.convert_tokens_to_ids("<image>")
    assert config["tokens_per_image"] == model.tokens_per_image
    assert '"steps": 3' in (tmp_path / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.glob("*.bin")) == []  # safetensors only


def test_shards_above_the_size_limit(tokenizer, tmp_path):
    model = build(tokenizer)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    _, logits, _ = logits_and_tokens(DSVLModel.from_pretrained(tmp_path), tokenizer)
    assert torch.equal(logits, logits_and_tokens(model, tokenizer)[1])


def with_trained_lora(tokenizer):
    model = build(tokenizer, "clip", "baseline")
    add_lora(model.decoder, 4, 8.0, 0.0, DECODER_TARGETS, "decoder")
    add_lora(model.vision, 2, 4.0, 0.0, model.vision.lora_target_modules, "vision")
    with torch.no_grad():  # lora_B starts at zero: give the adapters a visible effect
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model


def test_lora_merged_and_kept(tokenizer, tmp_path):
    model = with_trained_lora(tokenizer)
    expected = logits_and_tokens(model, tokenizer)
    model.save_pretrained(tmp_path / "merged")
    merged = DSVLModel.from_pretrained(tmp_path / "merged")
    assert not any("lora_" in name for name in merged.state_dict())
    got = logits_and_tokens(merged, tokenizer)
    assert torch.allclose(got[1], expected[1], atol=1e-5) and got[2] == expected[2]

    model.save_pretrained(tmp_path / "kept", keep_adapters=True)
    for part in ("decoder", "vision"):
        assert (tmp_path / "kept" / "adapters" / part / "adapter_config.json").is_file()
    kept = DSVLModel.from_pretrained(tmp_path / "kept")
    assert json.loads((tmp_path / "kept" / "config.json").read_text())["adapters"] == ["decoder", "vision"]
    got = logits_and_tokens(kept, tokenizer)
    assert torch.equal(got[1], expected[1]) and got[2] == expected[2]


def test_missing_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m dsvl_exp.export"):
        DSVLModel.from_pretrained(tmp_path)


# the reference's eps per LayerNorm of each projection (utils/model/vis_proj.py, modeling_dsvl.py)
REFERENCE_EPS = {
    "baseline": {"norm": 1e-12},
    "vit": {"encoder_layer.layer_norm1": 1e-5, "encoder_layer.layer_norm2": 1e-5, "norm": 1e-12},
    "perceiver": {"ln_q": 1e-12, "ln_kv": 1e-12, "out.0": 1e-12},
}


@pytest.mark.parametrize("projection", sorted(REFERENCE_EPS))
def test_every_projection_layernorm_has_the_reference_eps(tokenizer, projection):
    tower = build(tokenizer).vision
    module = build_projection(projection, tower, 64)
    eps = {name: m.eps for name, m in module.named_modules() if isinstance(m, nn.LayerNorm)}
    assert eps == REFERENCE_EPS[projection]


def test_tied_decoder_weights_round_trip(tokenizer, tmp_path):
    model = build(tokenizer)
    model.decoder.config.tie_word_embeddings = True
    model.decoder.tie_weights()
    assert model.decoder.lm_head.weight is model.embed_tokens.weight
    model.save_pretrained(tmp_path)
    loaded = DSVLModel.from_pretrained(tmp_path)
    assert loaded.decoder.lm_head.weight.data_ptr() == loaded.embed_tokens.weight.data_ptr()
    assert torch.equal(logits_and_tokens(loaded, tokenizer)[1], logits_and_tokens(model, tokenizer)[1])

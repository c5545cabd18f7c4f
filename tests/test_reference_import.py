"""`python -m dsvl_exp.export --from-dsvl`: a DeepSpeed-VisualChat state dict (its key layout,
written here from tiny models) becomes an export folder with the same forward and greedy tokens."""

import logging
import re

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, LlamaConfig

from dsvl_exp.export import main as export_main
from dsvl_exp.models.dsvl import DSVLModel
from dsvl_exp.models.reference_import import ReferenceImportError
from dsvl_exp.models.tokenizer import BUNDLED_TOKENIZER
from helpers import run_module
from test_save_pretrained import logits_and_tokens
from test_model_family import build

# dsvl_exp name -> the reference's (DeepSpeedViLModel, HF 4.33), per projection
TO_REFERENCE = {
    "baseline": [(r"^projection\.linear\.", "projection.0."), (r"^projection\.norm\.", "projection.1.")],
    "vit": [(r"^projection\.encoder_layer\.", "projection.vis_layer."), (r"^projection\.linear\.", "projection.projection.0."),
            (r"^projection\.norm\.", "projection.projection.1.")],
    "perceiver": [(r"^projection\.out\.", "projection.projection.")],
}


def reference_state_dict(model, projection, vision_model_level):
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("vision.model."):
            state["vis_encoder." + ("vision_model." if vision_model_level else "") + key.removeprefix("vision.model.")] = value
        elif key == "decoder.model.embed_tokens.weight":
            state["lang_embed.weight"] = value  # the trained copy the reference's forward embeds with
            state["lang_decoder.model.embed_tokens.weight"] = torch.randn_like(value)  # the decoder's own, untrained
        elif key.startswith("decoder."):
            state["lang_decoder." + key.removeprefix("decoder.")] = value
        else:
            for pattern, replacement in TO_REFERENCE[projection]:
                key = re.sub(pattern, replacement, key)
            state[key] = value
    if vision_model_level:  # HF 4.33 saved these buffers; newer transformers recompute them
        state["vis_encoder.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
        state["lang_decoder.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    return state


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("reference")
    clip, qwen = build(tokenizer, "clip"), build(tokenizer, "qwen")
    clip.vision.model.config.save_pretrained(root / "clip")
    clip.vision.image_processor.save_pretrained(root / "clip")
    qwen_config = clip.vision.model.config.__class__(num_attention_heads=2)  # the reference's copied CLIP config
    qwen_config.save_pretrained(root / "qwen_clip")
    qwen.vision.image_processor.save_pretrained(root / "qwen_clip")
    llama = LlamaConfig.from_dict(clip.decoder.config.to_dict())
    llama.vocab_size = 512  # before the reference added its tokens
    llama.save_pretrained(root / "llama")
    AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER)).save_pretrained(root / "llama")  # without <image>, like LLaMA's
    return root


def command(root, checkpoint, vision, projection, out):
    return ["--from-dsvl", str(checkpoint), "--vision", str(root / vision), "--decoder", str(root / "llama"),
            "--tokenizer", str(root / "llama"), "--projection", projection, "--attention", "mmca_legacy",
            "--image-order", "reversed_legacy", "--out", str(out)]


@pytest.mark.parametrize("vision,projection", [("clip", "baseline"), ("clip", "vit"), ("qwen", "baseline")])
def test_import_reproduces_forward_and_greedy_tokens(tokenizer, hf_folders, tmp_path, caplog, vision, projection):
    reference = build(tokenizer, vision, projection, attention="mmca_legacy")
    reference.image_order = "reversed_legacy"
    state = reference_state_dict(reference, projection, vision_model_level=vision == "clip")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    with caplog.at_level(logging.INFO):
        assert export_main(command(hf_folders, tmp_path / "model.safetensors", "qwen_clip" if vision == "qwen" else "clip",
                                   projection, tmp_path / "out")) == 0
    assert "lang_decoder.model.embed_tokens.weight differs from lang_embed.weight" in caplog.text
    imported = DSVLModel.from_pretrained(tmp_path / "out")
    assert imported.uses_mmca and imported.image_order == "reversed_legacy"
    expected, got = logits_and_tokens(reference, tokenizer), logits_and_tokens(imported, tokenizer)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]) and got[2] == expected[2]


def test_perceiver_through_the_entry_point(tokenizer, hf_folders, tmp_path):
    """A .bin read with weights_only=True; the query count comes from the checkpoint (4, not 256)."""
    reference = build(tokenizer, "clip", "perceiver", attention="mmca_legacy")
    reference.image_order = "reversed_legacy"
    torch.save(reference_state_dict(reference, "perceiver", vision_model_level=True), tmp_path / "pytorch_model.bin")
    result = run_module("dsvl_exp.export", *command(hf_folders, tmp_path / "pytorch_model.bin", "clip", "perceiver",
                                                    tmp_path / "out"), timeout=300)
    assert "dropped 2 recomputed buffers" in result.stderr
    imported = DSVLModel.from_pretrained(tmp_path / "out")
    assert imported.tokens_per_image == 4
    expected, got = logits_and_tokens(reference, tokenizer), logits_and_tokens(imported, tokenizer)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]) and got[2] == expected[2]


def test_missing_and_unexpected_keys_fail_listing_them(tokenizer, hf_folders, tmp_path, capsys):
    reference = build(tokenizer, "clip", "baseline")
    state = reference_state_dict(reference, "baseline", vision_model_level=True)
    del state["lang_decoder.lm_head.weight"]
    state["projection.2.weight"] = torch.zeros(1)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    argv = command(hf_folders, tmp_path / "model.safetensors", "clip", "baseline", tmp_path / "out")
    assert export_main(argv) == 2
    error = capsys.readouterr().err
    assert "missing 1 ['decoder.lm_head.weight']" in error and "unexpected 1 ['projection.2.weight']" in error
    assert not (tmp_path / "out").exists()
    with pytest.raises(ReferenceImportError, match=r"missing 21 .*unexpected 5 .*Check --projection"):
        from dsvl_exp.models.reference_import import import_reference_checkpoint

        import_reference_checkpoint(tmp_path / "model.safetensors", hf_folders / "clip", hf_folders / "llama", tokenizer,
                                    "vit", "causal", "forward")

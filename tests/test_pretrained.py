"""`vision.pretrained` / `decoder.pretrained` load real HF folders through from_pretrained."""

import json

import pytest
import torch
from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from dsvl_exp.models.tokenizer import BUNDLED_TOKENIZER
from dsvl_exp.models.vision import clip_image_processor
from conftest import compose_config
from helpers import read_metrics, run_train


@pytest.fixture(scope="module")
def pretrained_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    vision = CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=96))
    vision.save_pretrained(root / "clip")
    clip_image_processor(32).save_pretrained(root / "clip")
    raw_tokenizer = AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER))  # no <image>/<PAD> yet, like LLaMA's
    decoder = LlamaForCausalLM(LlamaConfig(vocab_size=len(raw_tokenizer), hidden_size=40, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, intermediate_size=80,
                                           max_position_embeddings=512, tie_word_embeddings=False))
    decoder.save_pretrained(root / "llama")
    raw_tokenizer.save_pretrained(root / "llama")
    return root, vision, decoder


def test_build_model_loads_saved_weights(pretrained_dirs):
    from dsvl_exp.training.model_setup import build_model
    from hydra.utils import instantiate

    root, vision, decoder = pretrained_dirs
    cfg = compose_config(f"vision.pretrained={root / 'clip'}", f"decoder.pretrained={root / 'llama'}")
    tokenizer = instantiate(cfg.tokenizer)
    assert len(tokenizer) == 515 and tokenizer.convert_tokens_to_ids("<image>") == 513
    model = build_model(cfg, tokenizer)
    assert model.vision.hidden_size == 48  # the checkpoint's config, not the YAML's tiny default
    for (name, saved), loaded in zip(vision.state_dict().items(), model.vision.model.state_dict().values()):
        assert torch.equal(saved, loaded), name
    assert model.embed_tokens.weight.shape == (515, 40)
    assert torch.equal(model.embed_tokens.weight[:512], decoder.get_input_embeddings().weight)
    assert torch.equal(model.decoder.model.layers[1].mlp.down_proj.weight, decoder.model.layers[1].mlp.down_proj.weight)
    assert model.decoder.config.num_key_value_heads == 2


@pytest.mark.slow
def test_train_from_pretrained_folders_freezes_like_the_reference(pretrained_dirs, tmp_path):
    root, _, _ = pretrained_dirs
    run_dir = tmp_path / "run"
    run_train(run_dir, "experiment=smoke", f"vision.pretrained={root / 'clip'}", f"decoder.pretrained={root / 'llama'}")
    # vision and decoder frozen; projection and the embedding table train
    counts = json.loads((run_dir / "parameters.json").read_text())
    assert counts["vision"]["trainable"] == 0 and counts["decoder"]["trainable"] == 0
    assert counts["vision"]["total"] == 48192 and counts["decoder"]["total"] == 49600  # the folders' tiny models
    assert counts["embeddings"]["trainable"] == 515 * 40
    assert counts["projection"]["trainable"] == 48 * 40 + 40 + 2 * 40
    assert read_metrics(run_dir)[-1]["eval/loss"] == pytest.approx(6.049902, rel=1e-4)  # seeded, measured

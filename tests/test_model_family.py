"""Every vision x projection pair, LoRA, freezing and gradient checkpointing on tiny models."""

import pytest
import torch

from dsvl_exp.models.decoder import build_llama_decoder
from dsvl_exp.models.dsvl import DSVLModel
from dsvl_exp.models.freezing import apply_freezing, count_parameters
from dsvl_exp.models.lora import DECODER_TARGETS, add_lora
from dsvl_exp.models.projection import build_perceiver_projection
from dsvl_exp.models.qwen_vit import build_qwen_vision_tower
from dsvl_exp.models.tokenizer import image_token_id
from dsvl_exp.models.vision import build_clip_vision_tower
from dsvl_exp.models.build import build_projection
from test_model import batch_for


def build(tokenizer, vision="clip", projection="baseline", attention="causal"):
    torch.manual_seed(0)
    if vision == "clip":
        tower = build_clip_vision_tower(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    else:
        tower = build_qwen_vision_tower(image_size=32, patch_size=8, width=32, layers=1, heads=2, mlp_size=64, output_dim=48, num_queries=9)
    decoder = build_llama_decoder(len(tokenizer), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                  max_position_embeddings=512, attention=attention)
    extra = {"num_queries": 4} if projection == "perceiver" else {}
    proj = build_projection(projection, tower, 32, **extra)
    return DSVLModel(tower, proj, decoder, image_token_id(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)


@pytest.mark.parametrize("vision,projection,tokens,names", [
    ("clip", "baseline", 17, {"linear.weight", "norm.weight"}),
    ("clip", "vit", 17, {"encoder_layer.self_attn.q_proj.weight", "encoder_layer.mlp.fc1.weight", "linear.weight"}),
    ("clip", "perceiver", 4, {"query", "pos_embed", "kv_proj.weight", "attn.in_proj_weight", "ln_q.weight", "out.1.weight"}),
    ("qwen", "baseline", 9, {"linear.weight", "norm.bias"}),
])
def test_pairs_shapes_and_names(tokenizer, vision, projection, tokens, names):
    model = build(tokenizer, vision, projection)
    assert model.tokens_per_image == tokens
    assert names <= set(dict(model.projection.named_parameters()))
    embeds = model.encode_images(torch.randn(3, 3, 32, 32))
    assert embeds.shape == (3, tokens, 32)
    batch = batch_for(tokenizer, model, ["red circle", "two"], [2, 1])
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.logits.shape[1] >= batch["input_ids"].shape[1] + 2 * (tokens - 1)


@pytest.mark.parametrize("projection", ["vit", "perceiver"])
def test_qwen_refuses_a_second_resampler(tokenizer, projection):
    with pytest.raises(ValueError, match=f"projection={projection} cannot follow vision=qwen.*projection=baseline"):
        build(tokenizer, "qwen", projection)


def test_perceiver_heads_and_key_grid():
    perceiver = build_perceiver_projection(32, 256, num_queries=16)
    assert perceiver.attn.num_heads == 2  # decoder hidden 256 / 128
    features = torch.randn(2, 1 + 25, 32)  # CLS + a 5x5 grid: the 4x4 key positions are resized
    assert perceiver(features).shape == (2, 16, 256)


@pytest.mark.parametrize("vision", ["clip", "qwen"])
def test_lora_changes_only_adapter_weights(tokenizer, vision):
    model = build(tokenizer, vision)
    add_lora(model.decoder, 4, 8.0, 0.0, DECODER_TARGETS, "decoder")
    add_lora(model.vision, 4, 8.0, 0.0, model.vision.lora_target_modules, "vision")
    apply_freezing(model, vision="lora", projection=False, embeddings=False, decoder="lora")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # lora_B starts at zero: the second step moves lora_A too
        optimizer.zero_grad()
        model(**batch_for(tokenizer, model, ["red circle"], [1])).loss.backward()
        optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any(n.startswith("vision.") for n in changed) and any(n.startswith("decoder.") for n in changed)
    counts = count_parameters(model)
    assert counts["decoder"]["trainable"] == 0 and counts["vision"]["trainable"] == 0
    # 4 targets x 2 layers x (A: 4x32 + B: 32x4) in the decoder
    assert counts["decoder_lora"] == {"total": 2048, "trainable": 2048}
    # clip: 4 targets x 1 layer x (4x32 + 32x4); qwen: its attention and MLP projections, measured
    assert counts["vision_lora"]["trainable"] == {"clip": 1024, "qwen": 1536}[vision]


@pytest.mark.parametrize("vision", ["clip", "qwen"])
def test_gradient_checkpointing_gives_the_same_gradients(tokenizer, vision):
    grads = []
    for checkpointing in (False, True):
        model = build(tokenizer, vision)
        apply_freezing(model, vision=True, projection=True, embeddings=True, decoder=False)
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        model(**batch_for(tokenizer, model, ["red circle"], [1])).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_config_builds_every_allowed_pair_and_lora(tokenizer):
    from conftest import compose_config as compose_cfg

    from dsvl_exp.training.model_setup import build_model, configure_training

    for overrides, tokens in ((["vision=qwen"], 16), (["projection=vit"], 17), (["projection=perceiver"], 16)):
        cfg = compose_cfg(*overrides)
        assert build_model(cfg, tokenizer).tokens_per_image == tokens
    cfg = compose_cfg("train.decoder=lora", "lora.decoder.r=2", "lora.decoder.target_modules=[q_proj,v_proj]",
                      "train.vision=lora", "decoder.attention=mmca")
    model = build_model(cfg, tokenizer)
    configure_training(model, cfg)
    counts = count_parameters(model)
    # 2 targets x 2 layers x (2x64 + 64x2) in the tiny default decoder
    assert counts["decoder_lora"]["trainable"] == 1024 and counts["decoder"]["trainable"] == 0
    # the default r=8 on the 4 attention projections of the 2 layers of the tiny default tower (hidden 64)
    assert counts["vision_lora"]["trainable"] == 4 * 2 * (8 * 64 + 64 * 8) and counts["vision"]["trainable"] == 0
    assert model.uses_mmca
    with pytest.raises(ValueError, match="projection=perceiver cannot follow vision=qwen"):
        build_model(compose_cfg("vision=qwen", "projection=perceiver", validate=False), tokenizer)
    with pytest.raises(ValueError, match="train.projection='lora': expected true, false or auto"):
        configure_training(build_model(compose_cfg(), tokenizer), compose_cfg("train.projection=lora"))

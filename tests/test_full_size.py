"""The full-size compositions on the meta device (architecture only: no weights, no network).

Parameter counts per module and the trainable count under the reference's freezing (projection
+ language embeddings), checked against the public sizes: LLaMA-2-7B 6,738,415,616 and
LLaMA-2-13B 13,015,864,320 parameters at vocab 32000; the reference's tokenizer adds 3 tokens.
"""

import json

import torch

from dsvl_exp.models.decoder import build_llama_decoder
from dsvl_exp.models.dsvl import DSVLModel
from dsvl_exp.models.freezing import apply_freezing, count_parameters
from dsvl_exp.models.projection import build_baseline_projection
from dsvl_exp.models.qwen_vit import build_qwen_vision_tower
from dsvl_exp.models.vision import build_clip_vision_tower

VOCAB = 32003  # LLaMA-2 + "### Image:", "<image>", "<PAD>"
LLAMA_7B = dict(hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008)
LLAMA_13B = dict(hidden_size=5120, num_layers=40, num_heads=40, intermediate_size=13824)


def llama_total(hidden, public_total_at_32000):
    return public_total_at_32000 + 2 * (VOCAB - 32000) * hidden  # embed_tokens and lm_head rows


def compose(vision_builder, decoder_values):
    with torch.device("meta"):
        vision = vision_builder()
        decoder = build_llama_decoder(VOCAB, max_position_embeddings=4096, **decoder_values)
        projection = build_baseline_projection(vision.hidden_size, decoder.config.hidden_size)
        model = DSVLModel(vision, projection, decoder, image_token_id=32001, pad_token_id=32002, eos_token_id=2)
    apply_freezing(model, vision=False, projection=True, embeddings=True, decoder=False)
    return model, count_parameters(model)


def record(name, counts):
    table = {**counts, "all": {k: sum(v[k] for v in counts.values()) for k in ("total", "trainable")}}
    print(f"\n{name}: {json.dumps(table)}")
    return table


def test_clip_vit_l14_with_llama2_7b():
    model, counts = compose(
        lambda: build_clip_vision_tower(image_size=224, patch_size=14, hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
        LLAMA_7B,
    )
    table = record("clip-vit-l14 + llama-2-7b", counts)
    assert model.tokens_per_image == 257
    assert counts["vision"] == {"total": 303_179_776, "trainable": 0}  # openai/clip-vit-large-patch14 vision tower
    assert counts["projection"] == {"total": 1024 * 4096 + 4096 + 2 * 4096, "trainable": 4_206_592}
    assert counts["embeddings"] == {"total": VOCAB * 4096, "trainable": 131_084_288}
    assert counts["embeddings"]["total"] + counts["decoder"]["total"] == llama_total(4096, 6_738_415_616)
    assert counts["decoder"]["trainable"] == 0
    assert table["all"]["trainable"] == 135_290_880


def qwen_tower_total():
    width, layers, mlp, out, queries = 1664, 48, 8192, 4096, 256
    block = 4 * width + (width * 3 * width + 3 * width) + (width * width + width) + (width * mlp + mlp) + (mlp * width + width)
    trunk = 3 * width * 14 * 14 + 256 * width + 2 * width + layers * block
    resampler = 2 * queries * out + width * out + (3 * out * out + 3 * out) + (out * out + out) + 4 * out
    return trunk + resampler + 2 * out


def test_qwen_vl_tower_with_llama2_13b():
    model, counts = compose(
        lambda: build_qwen_vision_tower(image_size=448, patch_size=14, width=1664, layers=48, heads=16, mlp_size=8192,
                                        output_dim=4096, num_queries=256),
        LLAMA_13B,
    )
    table = record("qwen-vl tower + llama-2-13b", counts)
    assert model.tokens_per_image == 256
    assert counts["vision"] == {"total": qwen_tower_total(), "trainable": 0}
    assert 1.9e9 < counts["vision"]["total"] < 2.0e9  # "2B" in the DeepSpeed-VisualChat blog
    assert counts["projection"] == {"total": 4096 * 5120 + 5120 + 2 * 5120, "trainable": 20_986_880}
    assert counts["embeddings"] == {"total": VOCAB * 5120, "trainable": 163_855_360}  # "≈164M" in the spec
    assert counts["embeddings"]["total"] + counts["decoder"]["total"] == llama_total(5120, 13_015_864_320)
    assert table["all"]["trainable"] == 184_842_240

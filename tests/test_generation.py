"""Batched KV-cache decoding: causal and MMCA, greedy and sampling."""

import pytest
import torch

from conftest import build_tiny_model
from dsvl_exp.data.collate import left_padded


def prompts_batch(tokenizer):
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    bos = tokenizer.bos_token_id
    prompts = [[bos, 50, image_id, 30, 31, 32], [bos, image_id, 40, image_id, 41, 42, 43, 44], [bos, 60, 61]]
    image_num = [1, 2, 0]
    input_ids, mask = left_padded(prompts, tokenizer.pad_token_id)
    return prompts, image_num, input_ids, mask


def test_left_padded_ends_every_prompt_at_the_last_column():
    input_ids, mask = left_padded([[5, 6, 7], [8]], pad_token_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8]] and input_ids.dtype == torch.long
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


# Not mmca_legacy: its leak spreads weight over padding keys too, so its output depends on how
# much padding a row gets (the reference only ever decoded one conversation at a time).
@pytest.mark.parametrize("attention", ["causal", "mmca"])
def test_batched_equals_one_at_a_time(tokenizer, attention):
    model = build_tiny_model(tokenizer, attention=attention).eval()
    prompts, image_num, input_ids, mask = prompts_batch(tokenizer)
    images = torch.randn(3, 3, 32, 32)
    batched = model.generate(images, input_ids, mask, image_num, max_new_tokens=6)
    starts = [0, 1, 3]
    single = [
        model.generate(images[s:s + n], torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), [n], max_new_tokens=6)[0]
        for p, n, s in zip(prompts, image_num, starts)
    ]
    assert batched == single
    assert all(0 < len(ids) <= 6 for ids in batched)


@pytest.mark.parametrize("attention", ["causal", "mmca"])
def test_cached_decoding_equals_full_recompute(tokenizer, attention):
    """Each cached step's greedy token equals the argmax of a cache-free forward over prompt +
    tokens so far (new tokens are text: type 1)."""
    model = build_tiny_model(tokenizer, attention=attention).eval()
    model.eos_token_id = -1  # never stop early: compare all steps
    prompts, image_num, input_ids, mask = prompts_batch(tokenizer)
    images = torch.randn(3, 3, 32, 32)
    generated = torch.tensor(model.generate(images, input_ids, mask, image_num, max_new_tokens=5))
    spliced = model.splice(images, input_ids, mask, image_num, padding_side="left", pad_to_multiple_of=1)
    with torch.no_grad():
        for step in range(5):
            new = generated[:, :step]
            embeds = torch.cat([spliced.embeds, model.embed_tokens(new)], dim=1)
            types = torch.cat([spliced.token_types, torch.ones_like(new)], dim=1)
            positions = (torch.cumsum((types > 0).long(), dim=1) - 1).clamp(min=0)
            logits = model.decoder(inputs_embeds=embeds, position_ids=positions, **model.mask_kwargs(types)).logits
            assert torch.equal(logits[:, -1].argmax(-1), generated[:, step])


def test_sampling(tokenizer):
    model = build_tiny_model(tokenizer, attention="mmca").eval()
    _, image_num, input_ids, mask = prompts_batch(tokenizer)
    images = torch.randn(3, 3, 32, 32)
    greedy = model.generate(images, input_ids, mask, image_num, max_new_tokens=6)
    # top_p this small keeps only the most likely token: sampling collapses to greedy
    assert model.generate(images, input_ids, mask, image_num, max_new_tokens=6, do_sample=True, top_p=1e-6) == greedy
    torch.manual_seed(0)
    first = model.generate(images, input_ids, mask, image_num, max_new_tokens=6, do_sample=True, temperature=5.0)
    torch.manual_seed(0)
    second = model.generate(images, input_ids, mask, image_num, max_new_tokens=6, do_sample=True, temperature=5.0)
    assert first == second and first != greedy
    assert all(0 <= t < len(tokenizer) for row in first for t in row)


@pytest.mark.parametrize("attention", ["causal", "mmca", "mmca_legacy"])
@pytest.mark.parametrize("image_order", ["forward", "reversed_legacy"])
def test_greedy_ids_equal_the_former_decode_loop(tokenizer, attention, image_order):
    """Ids the hand-written KV-cache loop produced (tests/golden/greedy_ids.json) before decoding
    moved to transformers' GenerationMixin: batched and one prompt at a time, 8 steps each."""
    import json
    from pathlib import Path

    golden = json.loads((Path(__file__).parent / "golden" / "greedy_ids.json").read_text())["ids"][f"{attention}_{image_order}"]
    model = build_tiny_model(tokenizer, attention=attention, image_order=image_order, seed=3).eval()
    model.eos_token_id = -1
    prompts, image_num, input_ids, mask = prompts_batch(tokenizer)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert model.generate(images, input_ids, mask, image_num, max_new_tokens=8) == golden["batched"]
    single = [model.generate(images[s:s + n], torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), [n], max_new_tokens=8)[0]
              for p, n, s in zip(prompts, image_num, [0, 1, 3])]
    assert single == golden["single"]

"""MMCA against a slow, explicit reference: per-element masks built in Python loops, two softmaxes."""

import math

import pytest
import torch

from dsvl_exp.models.mmca import mmca_attention_forward, mmca_legacy_attention_forward

PAD, TEXT, IMAGE = 0, 1, 2
# right padding, left padding (generation), text before the first image, several images
TOKEN_TYPES = torch.tensor([
    [1, 2, 2, 2, 1, 1, 2, 2, 2, 1, 1, 0, 0],
    [0, 0, 0, 1, 1, 2, 2, 2, 1, 2, 2, 2, 1],
    [1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 2, 2, 2],
])


class Attn(torch.nn.Module):
    num_key_value_groups = 2  # GQA: 4 query heads over 2 key/value heads


def reference_mmca(query, key, value, types, legacy):
    """query [B, H, Q, D] for the last Q of the K positions in `types`."""
    batch, heads, q_len, dim = query.shape
    k_len = types.shape[1]
    key = key.repeat_interleave(2, dim=1)
    value = value.repeat_interleave(2, dim=1)
    out = torch.zeros_like(query, dtype=torch.float64)
    minimum = torch.finfo(torch.float32).min
    for b in range(batch):
        for h in range(heads):
            for qi in range(q_len):
                i = k_len - q_len + qi  # absolute position of the query
                scores = [float(query[b, h, qi] @ key[b, h, j]) / math.sqrt(dim) for j in range(k_len)]
                for branch in (IMAGE, TEXT):
                    if legacy:
                        # the reference: finfo.min for a blocked key plus finfo.min for a future one,
                        # added in fp32 (two of them overflow to -inf)
                        logits = []
                        for j in range(k_len):
                            key_ok = types[b, j] == branch
                            if branch == IMAGE and types[b, i] == IMAGE and q_len == k_len:
                                key_ok = j == i
                            mask = torch.tensor(0.0 if key_ok else minimum) + torch.tensor(0.0 if j <= i else minimum)
                            logits.append(torch.tensor(scores[j], dtype=torch.float32) + mask)
                        weights = torch.softmax(torch.stack(logits).double(), dim=0)
                    else:
                        if branch == IMAGE and types[b, i] == IMAGE:
                            legal = [j == i for j in range(k_len)]
                        else:
                            legal = [j <= i and types[b, j] == branch for j in range(k_len)]
                        if not any(legal):
                            continue  # no legal key: nothing from this branch
                        logits = torch.tensor([s if ok else -math.inf for s, ok in zip(scores, legal)], dtype=torch.float64)
                        weights = torch.softmax(logits, dim=0)
                    out[b, h, qi] += weights @ value[b, h].double()
    return out.transpose(1, 2).float()


def random_qkv(q_len, k_len, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch, heads, dim = TOKEN_TYPES.shape[0], 4, 8
    return (torch.randn(batch, heads, q_len, dim, generator=g), torch.randn(batch, 2, k_len, dim, generator=g),
            torch.randn(batch, 2, k_len, dim, generator=g))


@pytest.mark.parametrize("legacy", [False, True], ids=["mmca", "mmca_legacy"])
def test_prompt_pass_matches_reference(legacy):
    k_len = TOKEN_TYPES.shape[1]
    query, key, value = random_qkv(k_len, k_len)
    function = mmca_legacy_attention_forward if legacy else mmca_attention_forward
    out, _ = function(Attn(), query, key, value, None, scaling=8**-0.5, mmca_token_types=TOKEN_TYPES)
    expected = reference_mmca(query, key, value, TOKEN_TYPES, legacy)
    assert out.shape == expected.shape == (3, k_len, 4, 8)
    assert (out - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("legacy", [False, True], ids=["mmca", "mmca_legacy"])
def test_cached_decoding_matches_reference(legacy):
    """A decode step: one new text query over the cached keys plus its own."""
    types = torch.cat([TOKEN_TYPES, torch.full((3, 2), TEXT)], dim=1)
    function = mmca_legacy_attention_forward if legacy else mmca_attention_forward
    for q_len, step_types in ((1, types[:, :-1]), (1, types)):
        query, key, value = random_qkv(q_len, step_types.shape[1], seed=step_types.shape[1])
        out, _ = function(Attn(), query, key, value, None, scaling=8**-0.5, mmca_token_types=step_types)
        expected = reference_mmca(query, key, value, step_types, legacy)
        assert (out - expected).abs().max().item() <= 1e-5


def test_legacy_leaks_where_fixed_gives_zero():
    """Row 2, position 0: a text token before any image. The reference's image branch has no
    legal key yet still returns about one unit of weight; `mmca` takes nothing from it."""
    types = TOKEN_TYPES[2:3]
    k_len = types.shape[1]
    query = torch.zeros(1, 4, k_len, 8)  # equal scores: the branch weights are plain averages
    key = torch.randn(1, 2, k_len, 8)
    value = torch.zeros(1, 2, k_len, 8)
    value[..., 0] = (types[0] == IMAGE).float()  # channel 0 counts weight on image tokens
    value[..., 1] = (types[0] == TEXT).float()
    fixed, _ = mmca_attention_forward(Attn(), query, key, value, None, mmca_token_types=types)
    legacy, _ = mmca_legacy_attention_forward(Attn(), query, key, value, None, mmca_token_types=types)
    assert fixed[0, 0, 0, 0].item() == 0.0 and fixed[0, 0, 0, 1].item() == pytest.approx(1.0)
    # legacy: uniform over earlier text (1, itself) and later images (6 of them) in the image branch
    assert legacy[0, 0, 0, 0].item() == pytest.approx(6 / 7, abs=1e-6)
    assert legacy[0, 0, 0, 1].item() == pytest.approx(1 + 1 / 7, abs=1e-6)
    # an image token (position 4): itself in the image branch, the 4 earlier text tokens in the other
    assert fixed[0, 4, 0, 0].item() == pytest.approx(1.0) and fixed[0, 4, 0, 1].item() == pytest.approx(1.0)

"""The fast paths against the slow ones they replace: the loss on supervised positions only
against full-length logits, the gathered MMCA's gradients against masked full squares."""

import pytest
import torch
import torch.nn.functional as F

from dsvl_exp.data.template import IGNORE_INDEX
from dsvl_exp.models import mmca
from dsvl_exp.models.dsvl import causal_lm_loss
from conftest import build_tiny_model
from test_mmca import TOKEN_TYPES, Attn, random_qkv, reference_mmca


def tiny_batch(tokenizer):
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    rows = [[tokenizer.bos_token_id, image_id, image_id, 30, 31, 32, 33, 34, tokenizer.eos_token_id],
            [tokenizer.bos_token_id, 40, image_id, 41, 42, tokenizer.eos_token_id]]
    input_ids = torch.full((2, 9), tokenizer.pad_token_id)
    mask = torch.zeros_like(input_ids)
    for r, ids in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        mask[r, : len(ids)] = 1
    labels = input_ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :4] = IGNORE_INDEX
    torch.manual_seed(1)
    return dict(images=torch.randn(3, 3, 32, 32), input_ids=input_ids, attention_mask=mask, labels=labels, image_num=[2, 1])


@pytest.mark.parametrize("attention", ["causal", "mmca"])
def test_supervised_loss_and_grads_equal_full_logits_path(tokenizer, attention):
    model = build_tiny_model(tokenizer, attention=attention)
    batch = tiny_batch(tokenizer)
    out = model(**batch)
    out.loss.backward()
    fast = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    spliced = model.splice(batch["images"], batch["input_ids"], batch["attention_mask"], batch["image_num"], labels=batch["labels"])
    logits = model.decoder(inputs_embeds=spliced.embeds, position_ids=spliced.position_ids, use_cache=False,
                           **model.mask_kwargs(spliced.token_types)).logits
    loss, count = causal_lm_loss(logits, spliced.labels)
    loss.backward()
    assert out.num_supervised_tokens == count == int((spliced.labels[:, 1:] != IGNORE_INDEX).sum()) > 0
    assert abs(out.loss.item() - loss.item()) <= 1e-6
    assert fast.keys() == {name for name, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(fast[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-6)  # computed on first access


def masked_squares(query, key, value, types):
    """The full-square MMCA (two masked SDPA calls) the gathered form replaced."""
    key, value = key.repeat_interleave(2, dim=1), value.repeat_interleave(2, dim=1)
    causal, image_keys, text_keys = mmca.branch_permissions(types, query.shape[2], legacy=False)
    out = 0
    for keys in (image_keys, text_keys):
        allowed = (causal & keys)[:, None]
        bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        branch = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=8**-0.5)
        out = out + branch * allowed.any(-1, keepdim=True)
    return out.transpose(1, 2)


@pytest.mark.parametrize("decoding", [False, True], ids=["prompt", "cached"])
def test_gathered_mmca_gradients_match_masked_squares(decoding):
    types = torch.cat([TOKEN_TYPES, torch.full((3, 2), 1)], dim=1) if decoding else TOKEN_TYPES
    q_len = 2 if decoding else types.shape[1]
    leaves = [t.requires_grad_() for t in random_qkv(q_len, types.shape[1], seed=3)]
    grad_out = torch.randn(3, q_len, 4, 8)
    out, _ = mmca.mmca_attention_forward(Attn(), *leaves, None, scaling=8**-0.5, mmca_token_types=types)
    fast = torch.autograd.grad(out, leaves, grad_out)
    expected = masked_squares(*leaves, types)
    slow = torch.autograd.grad(expected, leaves, grad_out)
    assert (out - expected).abs().max().item() <= 1e-5
    for a, b in zip(fast, slow):
        assert (a - b).abs().max().item() <= 1e-5


def test_plan_is_rebuilt_for_new_or_changed_token_types():
    query, key, value = random_qkv(TOKEN_TYPES.shape[1], TOKEN_TYPES.shape[1])
    first = TOKEN_TYPES.clone()
    mmca.mmca_attention_forward(Attn(), query, key, value, None, scaling=8**-0.5, mmca_token_types=first)
    other = TOKEN_TYPES.flip(0).clone()  # same shape, other tensor
    out, _ = mmca.mmca_attention_forward(Attn(), query, key, value, None, scaling=8**-0.5, mmca_token_types=other)
    assert (out - reference_mmca(query, key, value, other, legacy=False)).abs().max().item() <= 1e-5
    first[:, 1:4] = 1  # changed in place: its version moves on
    out, _ = mmca.mmca_attention_forward(Attn(), query, key, value, None, scaling=8**-0.5, mmca_token_types=first)
    assert (out - reference_mmca(query, key, value, first, legacy=False)).abs().max().item() <= 1e-5

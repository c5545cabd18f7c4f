"""MMCA against a slow, explicit reference: per-element masks built in Python loops, two softmaxes."""

import math

import pytest
import torch

from dsvl_exp.models.mmca import branch_permissions, mmca_attention_forward, mmca_legacy_attention_forward

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


# ---- mmca_flex: the same function through FlexAttention (models/mmca_flex.py) ------------------
# Eager flex_attention here (the compiled kernel takes about a minute to build on CPU; the GPU
# check runs it compiled): the same masks and arithmetic, without the fused kernel.


def flex_forward(query, key, value, types):
    from dsvl_exp.models.mmca_flex import branch_block_masks, flex_mmca

    return flex_mmca(query, key, value, branch_block_masks(types), 8**-0.5, compiled=False)


def image_order_types(image_order):
    """`reversed` puts each row's images in the other order, which moves the image spans (the
    layouts DSVLModel's two image orders produce)."""
    return TOKEN_TYPES if image_order == "forward" else TOKEN_TYPES.flip(1).roll(-2, dims=1)


@pytest.mark.parametrize("image_order", ["forward", "reversed"])
def test_flex_forward_matches_reference(image_order):
    types = image_order_types(image_order)
    k_len = types.shape[1]
    query, key, value = random_qkv(k_len, k_len, seed=3)
    flex = flex_forward(query, key, value, types)
    expected = reference_mmca(query, key, value, types, legacy=False)
    assert flex.shape == expected.shape == (3, k_len, 4, 8)
    assert (flex - expected).abs().max().item() <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention has no backward on CPU (torch 2.13)")
@pytest.mark.parametrize("image_order", ["forward", "reversed"])
def test_flex_backward_matches_gathered_on_gpu(image_order):
    """Compiled, fp32, on the GPU: outputs and the gradients of query, key and value."""
    from dsvl_exp.models.mmca_flex import branch_block_masks, flex_mmca

    types = image_order_types(image_order).cuda()
    k_len = types.shape[1]
    leaves = [t.cuda().requires_grad_() for t in random_qkv(k_len, k_len, seed=3)]
    flex = flex_mmca(*leaves, branch_block_masks(types), 8**-0.5, compiled=True)
    gathered, _ = mmca_attention_forward(Attn(), *leaves, None, scaling=8**-0.5, mmca_token_types=types)
    assert (flex - gathered).abs().max().item() <= 1e-4
    grad = torch.randn(flex.shape, generator=torch.Generator().manual_seed(1)).cuda()
    for flex_grad, gathered_grad in zip(torch.autograd.grad(flex, leaves, grad), torch.autograd.grad(gathered, leaves, grad)):
        assert flex_grad.shape == gathered_grad.shape
        assert (flex_grad - gathered_grad).abs().max().item() <= 1e-4


def test_flex_backend_runs_the_gathered_form_on_cpu(caplog, monkeypatch):
    """decoder.attention=mmca_flex through the attention interface on CPU: the gathered form (no
    FlexAttention backward on CPU), said once in the log; values and gradients as `mmca`'s."""
    from dsvl_exp.models import mmca

    monkeypatch.setattr(mmca, "_flex_notes", [])  # as in a fresh process: the note not logged yet
    k_len = TOKEN_TYPES.shape[1]
    leaves = [t.requires_grad_() for t in random_qkv(k_len, k_len, seed=7)]
    with caplog.at_level("WARNING", logger="dsvl_exp.models.mmca"):
        out, _ = mmca.MMCA_IMPLEMENTATIONS["mmca_flex"](Attn(), *leaves, None, scaling=8**-0.5, mmca_token_types=TOKEN_TYPES)
        mmca.MMCA_IMPLEMENTATIONS["mmca_flex"](Attn(), *leaves, None, scaling=8**-0.5, mmca_token_types=TOKEN_TYPES)
    assert sum("mmca_flex runs FlexAttention on CUDA devices only" in r.message for r in caplog.records) == 1
    expected = reference_mmca(*[t.detach() for t in leaves], TOKEN_TYPES, legacy=False)
    assert (out.detach() - expected).abs().max().item() <= 1e-5
    out.sum().backward()
    assert leaves[0].grad is not None and leaves[0].grad.abs().sum().item() > 0


def dense_mmca(query, key, value, types):
    """Both branches as masked squares (the form `mmca` replaced), differentiable: the gradient check."""
    causal, image_keys, text_keys = branch_permissions(types, query.shape[2], legacy=False)
    output = 0
    for keys in (image_keys, text_keys):
        allowed = (causal & keys)[:, None]
        bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=8**-0.5)
        output = output + out * allowed.any(dim=-1, keepdim=True)
    return output.transpose(1, 2)


@pytest.mark.parametrize("types", [TOKEN_TYPES, torch.tensor([[2, 2, 1, 1, 2, 2, 1, 0], [0, 0, 2, 2, 1, 2, 1, 1]])],
                         ids=["text_first", "image_first"])
def test_gathered_gradients_match_dense_masks(types):
    """Queries with no legal key in a branch (text before any image, an image first, left padding)
    read a zero row in the gathered form: no value and no gradient from that branch."""
    length = types.shape[1]
    g = torch.Generator().manual_seed(2)
    leaves = [torch.randn(types.shape[0], 4, length, 8, generator=g).requires_grad_() for _ in range(3)]
    gathered, _ = mmca_attention_forward(torch.nn.Module(), *leaves, None, scaling=8**-0.5, mmca_token_types=types)
    dense = dense_mmca(*leaves, types)
    assert (gathered - dense).abs().max().item() <= 1e-5
    grad = torch.randn(gathered.shape, generator=g)
    for ours, expected in zip(torch.autograd.grad(gathered, leaves, grad), torch.autograd.grad(dense, leaves, grad)):
        assert (ours - expected).abs().max().item() <= 1e-5


# ---- the prompt pass's cross-branch rectangles as key-prefix chunks (models/mmca_prefix.py) ----------


def random_layouts(seed, batch=4, length=40):
    """Rows of text with image spans of random lengths, some left-padded, some right-padded."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for row in range(batch):
        types = []
        while len(types) < length:
            kind = IMAGE if torch.rand((), generator=g) < 0.4 else TEXT
            types += [kind] * int(torch.randint(1, 7, (), generator=g))
        types = types[:length]
        pad = int(torch.randint(0, 6, (), generator=g))
        types = [PAD] * pad + types[:length - pad] if row % 2 else types[:length - pad] + [PAD] * pad
        rows.append(types)
    return torch.tensor(rows)


def gathered_both_ways(leaves, types, groups):
    """The gathered form with key-prefix chunks and with the rectangles masked in full."""
    from dsvl_exp.models import mmca

    rows = [leaf.transpose(1, 2) for leaf in leaves]
    return [mmca._gathered(*rows, mmca.gathered_plan(types, types.shape[1], torch.float32, key_prefixes=prefixes),
                           groups, 0.0, 8**-0.5) for prefixes in (True, False)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("groups", [1, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("call_overhead", [0, None], ids=["many_chunks", "merged_chunks"])
def test_key_prefix_chunks_match_masked_rectangles_and_dense(seed, groups, call_overhead, monkeypatch):
    """Batch rows with different layouts (images first or last, both paddings), forward and backward;
    chunks cut at every prefix change (unmasked where the rows agree) or merged (masked, some rows
    with no legal key)."""
    from dsvl_exp.models import mmca_prefix

    if call_overhead is not None:
        monkeypatch.setattr(mmca_prefix, "CALL_OVERHEAD_PAIRS", call_overhead)
        monkeypatch.setattr(mmca_prefix, "KEY_PASS_ROWS", call_overhead)
    types = random_layouts(seed)
    if seed == 2:
        types = types.flip(1)  # the other image order: spans moved, padding on the other side
    batch, length = types.shape
    g = torch.Generator().manual_seed(seed)
    leaves = [torch.randn(batch, heads, length, 8, generator=g).requires_grad_() for heads in (4, 4 // groups, 4 // groups)]
    chunked, masked = gathered_both_ways(leaves, types, groups)
    repeat = [leaves[0]] + [leaf.repeat_interleave(groups, dim=1) for leaf in leaves[1:]]
    dense = dense_mmca(*repeat, types)
    assert chunked.shape == masked.shape == dense.shape == (batch, length, 4, 8)
    assert (chunked - masked).abs().max().item() <= 1e-5
    assert (chunked - dense).abs().max().item() <= 1e-5
    grad = torch.randn(chunked.shape, generator=g)
    for ours, before, expected in zip(torch.autograd.grad(chunked, leaves, grad), torch.autograd.grad(masked, leaves, grad),
                                      torch.autograd.grad(dense, leaves, grad)):
        assert (ours - before).abs().max().item() <= 1e-5
        assert (ours - expected).abs().max().item() <= 1e-5


def test_key_prefix_chunks_are_unmasked_where_every_row_agrees(monkeypatch):
    """One row, three image spans of 3 after text gaps of 2: each span attends, unmasked, to the text
    before it (2, 4, 6 keys); the text segments to the image tokens before them (0, 3, 6, 9). With
    no cost per call nothing is merged; with the default cost these tiny chunks merge."""
    from dsvl_exp.models import mmca, mmca_prefix

    monkeypatch.setattr(mmca_prefix, "CALL_OVERHEAD_PAIRS", 0)
    monkeypatch.setattr(mmca_prefix, "KEY_PASS_ROWS", 0)

    one_row = torch.tensor([[1, 1, 2, 2, 2, 1, 1, 2, 2, 2, 1, 1, 2, 2, 2, 1, 1]])
    plan = mmca.gathered_plan(one_row, one_row.shape[1], torch.float32)
    assert plan.queries.sizes == [8, 0, 9]  # packed as text, padding, image
    # the image queries (slots 8..16) x the text keys; the text queries (slots 0..7) x the image keys
    assert [(c.start, c.stop, c.keys, c.bias) for c in plan.text_prefixes] == [(8, 11, 2, None), (11, 14, 4, None), (14, 17, 6, None)]
    assert [(c.start, c.stop, c.keys, c.bias) for c in plan.image_prefixes] == [
        (0, 2, 0, None), (2, 4, 3, None), (4, 6, 6, None), (6, 8, 9, None)]
    # a second row with its images later: the chunks over both rows carry a mask where the rows differ
    two_rows = torch.cat([one_row, torch.tensor([[1, 1, 1, 2, 2, 2, 1, 1, 2, 2, 2, 1, 1, 2, 2, 2, 1]])])
    plan = mmca.gathered_plan(two_rows, two_rows.shape[1], torch.float32)
    masked = [c for c in plan.text_prefixes + plan.image_prefixes if c.bias is not None]
    assert masked and all(c.bias.shape == (2, 1, c.stop - c.start, c.keys) for c in masked)
    assert plan.text_prefixes[0].keys == 3  # the second row's first span sees 3 text tokens
    # right padding: its queries see every text key, and take the slots between text and image
    padded = torch.tensor([[1, 1, 2, 2, 1, 0, 0]])
    plan = mmca.gathered_plan(padded, padded.shape[1], torch.float32)
    assert plan.queries.sizes == [3, 2, 2]
    assert [(c.start, c.stop, c.keys, c.bias) for c in plan.text_prefixes] == [(3, 5, 3, None), (5, 7, 2, None)]


def test_key_prefix_chunks_with_dropout_keep_the_shape_and_gradient():
    types = random_layouts(3)
    leaves = [torch.randn(types.shape[0], 4, types.shape[1], 8).requires_grad_() for _ in range(3)]
    torch.manual_seed(0)
    out, _ = mmca_attention_forward(torch.nn.Module(), *leaves, None, dropout=0.5, scaling=8**-0.5, mmca_token_types=types)
    assert out.shape == (types.shape[0], types.shape[1], 4, 8) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0 for leaf in leaves)

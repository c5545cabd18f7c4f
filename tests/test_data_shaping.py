"""Concatenation, subsetting, split, max_seq_len fitting and the length-grouped sampler."""

import random
from collections import Counter

import pytest

from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.length import fit_to_max_seq_len, round_lengths
from dsvl_exp.data.mixing import concatenate, split_train_eval, subsample
from dsvl_exp.data.sampler import LengthGroupedSampler
from dsvl_exp.data.template import ChatTemplate, tokenize_conversation


def conv(i, images=1, rounds=1):
    per_round = [images] + [0] * (rounds - 1)
    return Conversation(f"c{i}", tuple(f"img{i}_{k}.png" for k in range(images)),
                        tuple(Round(f"What colour is the shape in image {k + 1}?", "red", n) for k, n in enumerate(per_round)))


def test_concatenation_keeps_every_sample_once_and_bounds_groups():
    items = [conv(i) for i in range(50)]
    grouped = concatenate(items, max_group=3, max_images=8, rng=random.Random(0))
    members = [part for g in grouped for part in g.id.split("+")]
    assert sorted(members) == sorted(c.id for c in items)  # the reference drops its first group; nothing is lost here
    sizes = Counter(len(g.id.split("+")) for g in grouped)
    assert set(sizes) == {1, 2, 3}
    merged = next(g for g in grouped if "+" in g.id)
    assert merged.num_images == len(merged.images) == len(merged.rounds)
    text = ChatTemplate().render_conversation(merged)
    assert "### Image 2:" in text[1][0] and ChatTemplate().system_prompt not in text[1][0]


def test_concatenation_never_exceeds_max_images():
    items = [conv(i, images=3) for i in range(30)]
    grouped = concatenate(items, max_group=4, max_images=7, rng=random.Random(1))
    assert max(g.num_images for g in grouped) == 6 and sum(g.num_images for g in grouped) == 90


def test_concatenation_is_seeded():
    items = [conv(i) for i in range(20)]
    ids = lambda seed: [g.id for g in concatenate(items, 3, 8, random.Random(seed))]  # noqa: E731
    assert ids(4) == ids(4) and ids(4) != ids(5)


def test_subsample_by_count_and_weight():
    items = [conv(i) for i in range(10)]
    assert len(subsample(items, 4, None, random.Random(0), "d")) == 4
    assert len(set(c.id for c in subsample(items, 4, None, random.Random(0), "d"))) == 4
    assert subsample(items, "all", None, random.Random(0), "d") == items
    half = subsample(items, "all", 0.5, random.Random(0), "d")
    assert len(half) == 5 and len(set(c.id for c in half)) == 5
    counts = Counter(c.id for c in subsample(items, "all", 2.5, random.Random(0), "d"))
    assert sum(counts.values()) == 25 and set(counts.values()) == {2, 3}
    with pytest.raises(DataError, match="samples=11 but it has only 10"):
        subsample(items, 11, None, random.Random(0), "d")
    with pytest.raises(DataError, match="either samples or weight"):
        subsample(items, 3, 0.5, random.Random(0), "d")


def test_split_is_seeded_and_disjoint():
    items = [conv(i) for i in range(20)]
    train, held = split_train_eval(items, 0.1, random.Random(7))
    assert len(train) == 18 and len(held) == 2 and not {c.id for c in train} & {c.id for c in held}
    assert split_train_eval(items, 0.1, random.Random(7)) == (train, held)


def test_max_seq_len_truncates_at_round_boundaries_counting_visual_tokens(tokenizer):
    template = ChatTemplate()
    three = Conversation("t", ("a.png", "b.png"), (Round("What colour is the shape in image 1?", "red", 1),
                                                   Round("What shape is in image 2?", "circle", 1),
                                                   Round("How many images show a circle?", "one", 0)))
    per_round = round_lengths(three, tokenizer, template, tokens_per_image=10)
    ids, _ = tokenize_conversation(tokenizer, template, three)
    assert sum(per_round) == len(ids) + 2 * 9
    limit = per_round[0] + per_round[1] - 1  # the second round (and its image) no longer fits
    fitted = fit_to_max_seq_len([three], tokenizer, template, 10, limit, "train")
    (kept,) = fitted.conversations
    assert (fitted.truncated, fitted.dropped, fitted.lengths) == (1, 0, [per_round[0]])
    assert kept.images == ("a.png",) and len(kept.rounds) == 1
    text_only = Conversation("short", (), (Round("red?", "one", 0),))
    fitted = fit_to_max_seq_len([three, text_only], tokenizer, template, 10, per_round[0] - 1, "train")
    assert fitted.dropped == 1 and [c.id for c in fitted.conversations] == ["short"]
    with pytest.raises(DataError, match="every sample is longer than data.max_seq_len=5"):
        fit_to_max_seq_len([three], tokenizer, template, 10, 5, "train")
    untouched = fit_to_max_seq_len([three], tokenizer, template, 10, None, "train")
    assert (untouched.truncated, untouched.dropped, untouched.conversations) == (0, 0, [three])


def test_length_grouped_sampler_shards_like_distributed_sampler():
    lengths = [random.Random(i).randint(10, 500) for i in range(103)]
    shards = [list(LengthGroupedSampler(lengths, 4, num_replicas=3, rank=r, seed=0, group_batches=2)) for r in range(3)]
    assert all(len(s) == 32 == len(LengthGroupedSampler(lengths, 4, 3, r)) for r, s in enumerate(shards))
    assert len(set().union(*shards)) == 96  # disjoint, drop_last: 103 -> 8 global batches of 12
    sampler = LengthGroupedSampler(lengths, 4, 3, 1, seed=0)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


def padding_fraction(lengths, order, batch_size):
    padded = 0
    for start in range(0, len(order) - batch_size + 1, batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        padded += max(batch) * len(batch) - sum(batch)
    return padded / sum(max(lengths[i] for i in order[s : s + batch_size]) * batch_size
                        for s in range(0, len(order) - batch_size + 1, batch_size))


def test_length_grouping_cuts_padding():
    rng = random.Random(0)
    lengths = [rng.randint(20, 400) for _ in range(800)]
    order = list(range(800))
    rng.shuffle(order)
    grouped = list(LengthGroupedSampler(lengths, 8, seed=0))
    assert padding_fraction(lengths, grouped, 8) < padding_fraction(lengths, order, 8) / 4

"""data.redraw_each_epoch: every epoch re-draws prompts, round order and concatenation groups as
a pure function of (seed, epoch); what is trained on, the sample count and the eval split stay."""

import json
from collections import Counter

import pytest

from dsvl_exp.data.build import build_conversations
from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.dataset import ConversationDataset
from dsvl_exp.data.redraw import EpochDraws
from dsvl_exp.data.template import ChatTemplate

from helpers import read_metrics, run_train
from reference_fixtures import coco, mimicit_cgd, write_image, write_json


def write_data(root, num_aokvqa=20):
    coco(root)
    mimicit_cgd(root)
    write_json(root / "aokvqa/annotations/aokvqa_v1p0_train.json", [
        {"question_id": f"q{k}", "image_id": 42, "question": f"Question {k}?", "choices": ["a", "b"],
         "correct_choice_idx": k % 2, "rationales": ["Because."]} for k in range(num_aokvqa)])
    write_image(root / "img.png")
    path = root / "d.jsonl"
    path.write_text("".join(json.dumps({"id": f"n{k}", "images": ["img.png"] * (1 + k % 2),
                                        "rounds": [{"question": "<image>\n" * (1 + k % 2) + f"q{k}", "answer": f"a{k}"}]}) + "\n"
                            for k in range(12)))
    return [{"format": "aokvqa"}, {"format": "otter_mimicit_cgd"}, {"format": "native", "path": str(path), "concatenate": 3}]


def build(root, specs, seed=0):
    return build_conversations(None, specs, [], data_path=str(root), eval_split=0.2, max_images_per_sample=4, seed=seed)


def members(conversations):
    return Counter(part for c in conversations for part in c.id.split("+"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("redraw")
    specs = write_data(root)
    return root, specs, build(root, specs)


def test_epochs_redraw_prompts_rounds_and_groups_but_keep_what_is_trained_on(data):
    root, specs, built = data
    draws = EpochDraws(built, seed=0)
    assert draws.conversations(0) == built.train
    epochs = [draws.conversations(e) for e in range(4)]
    held_out = set(members(built.eval))
    for later in epochs[1:]:
        assert len(later) == len(built.train) and later != epochs[0]
        assert members(later) == members(epochs[0]) and not held_out & set(members(later))
        # every position keeps its group's size and image count: the image limit holds without re-checking
        assert [(c.id.count("+"), c.num_images) for c in later] == [(c.id.count("+"), c.num_images) for c in epochs[0]]
    aokvqa = [[c.rounds[0].question for c in epoch if c.id.startswith("aokvqa")] for epoch in epochs]
    assert len({tuple(q) for q in aokvqa}) == 4  # prompt choice re-drawn each epoch
    groups = [sorted(c.id for c in epoch if "+" in c.id) for epoch in epochs]
    assert len({tuple(g) for g in groups}) == 4  # concatenation groups re-drawn each epoch
    cgd = [next(c for c in draws.conversations(e) if c.id.startswith("otter_mimicit_cgd") and len(c.rounds) == 2) for e in range(8)]
    assert {c.rounds[0].question for c in cgd} == {"What differs?", "Which is bigger?"}  # round order re-drawn
    assert all(c.rounds[0].num_images == 2 and c.rounds[1].num_images == 0 for c in cgd)


def test_an_epoch_is_a_pure_function_of_seed_and_epoch(data):
    root, specs, built = data
    rebuilt = build(root, specs)  # a resumed run builds again and calls set_epoch(3)
    assert EpochDraws(rebuilt, 0).conversations(3) == EpochDraws(built, 0).conversations(3)
    assert EpochDraws(build(root, specs, seed=1), 1).conversations(3) != EpochDraws(built, 0).conversations(3)
    kept = [0, 2, 5]  # after max_seq_len dropped some samples, the draws stay aligned to the kept ones
    assert EpochDraws(built, 0, kept).conversations(2) == [EpochDraws(built, 0).conversations(2)[i] for i in kept]


class FixedDraws:
    def __init__(self, conversations):
        self.drawn = conversations

    def conversations(self, epoch):
        return self.drawn


def test_dataset_set_epoch_fits_redrawn_samples_to_max_seq_len(tokenizer):
    from dsvl_exp.models.vision import clip_image_processor

    short = Conversation("s", (), (Round("hi", "yo"),))
    first = Conversation("s", (), (Round("hi", "yo"), Round("more", "ok")))
    too_long = Conversation("s", (), (Round("a much longer question " * 20, "yo"),))
    template = ChatTemplate(system_prompt="")
    limit = len(ConversationDataset([short], tokenizer, clip_image_processor(16), template)[0]["input_ids"]) + 3
    dataset = ConversationDataset([short], tokenizer, clip_image_processor(16), template, FixedDraws([first]), limit)
    epoch0 = dataset[0]["input_ids"]
    dataset.set_epoch(1)  # the second round does not fit: truncated at the round boundary
    assert dataset[0]["input_ids"].tolist() == epoch0.tolist()
    dataset.draws = FixedDraws([too_long])
    dataset.set_epoch(2)  # not even the first round fits: the epoch-0 version is used
    assert dataset[0]["input_ids"].tolist() == epoch0.tolist()
    dataset.draws = FixedDraws([Conversation("s", (), (Round("hey", "yo"),))])
    dataset.set_epoch(3)
    assert dataset[0]["input_ids"].tolist() != epoch0.tolist()
    dataset.set_epoch(0)
    assert dataset.conversations == [short]


@pytest.mark.slow
def test_redraws_through_the_entry_point(tmp_path):
    """Two runs over 2 epochs of the same data: with re-draws the second epoch sees other prompts
    (losses part after epoch 0), without them it sees the same ones; epoch 0 is identical."""
    write_data(tmp_path, num_aokvqa=8)
    common = ("experiment=smoke", "data.synthetic=null", f"data.data_path={tmp_path}", "train.micro_batch_size=4",
              "data.train=[{format: aokvqa}]", "data.eval=[{format: aokvqa}]", "train.max_steps=4",
              "train.log_every_n_steps=1", "eval.every_n_steps=null", "eval.generation=false", "eval.monitor=eval/loss",
              "checkpoint.every_n_steps=null", "checkpoint.export=false")
    losses = {}
    for redraw in (True, False):
        run_dir = tmp_path / f"run_{redraw}"
        run_train(run_dir, *common, f"data.redraw_each_epoch={str(redraw).lower()}")
        losses[redraw] = [m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m]
    assert len(losses[True]) == len(losses[False]) == 4  # 8 samples / 4 = 2 steps per epoch
    assert losses[True][:2] == losses[False][:2]
    assert losses[True][2:] != losses[False][2:]

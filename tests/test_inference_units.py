"""Inference building blocks with an in-memory tiny model: the chat history renders exactly as
training renders a conversation, suites read in both layouts, scoring, batched == unbatched."""

import json
import random

import pytest

from conftest import build_tiny_model
from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.synthetic import draw_shape
from dsvl_exp.data.template import ChatTemplate, tokenize_conversation
from dsvl_exp.inference.batch_eval import answer_conversations
from dsvl_exp.inference.builtin_suites import ensure_demo_suite
from dsvl_exp.inference.generation import GenerationSettings
from dsvl_exp.inference.loading import wrap_model
from dsvl_exp.inference.results import accuracy_table, contains, exact_match, majority_baseline, suite_rows
from dsvl_exp.inference.session import ChatError, ChatSession
from dsvl_exp.inference.suites import read_suite


@pytest.fixture(scope="module")
def loaded(tokenizer):
    return wrap_model(build_tiny_model(tokenizer), tokenizer, max_images=3)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    paths = []
    for i, (shape, colour) in enumerate([("circle", "red"), ("square", "blue"), ("triangle", "green")]):
        path = folder / f"{shape}.png"
        draw_shape(shape, colour, 32, random.Random(i)).save(path)
        paths.append(str(path))
    return paths


def test_session_history_is_training_rendering(loaded, pictures, tokenizer):
    settings = GenerationSettings(max_new_tokens=4)
    session = ChatSession(loaded, settings)
    first = session.ask("What colour is the shape in image 1?", pictures[:1])
    second = session.ask("And now?")  # text-only round
    prompt = session.rendered_prompt("What shape is in image 3?", pictures[1:3])
    # numbering continues across rounds: the third round's images are 2 and 3
    assert "### Image 1:\n<image>\n\n### Question:\nWhat colour" in prompt
    assert "### Image 2:\n<image>\n### Image 3:\n<image>\n\n### Question:\nWhat shape is in image 3?" in prompt
    assert prompt.count("### Image") == 3 and prompt.count("You are a helpful") == 1
    # token for token what training tokenizes for the same conversation (with the model's answers)
    conversation = Conversation(id="c", images=tuple(pictures), rounds=(
        Round("What colour is the shape in image 1?", first, 1), Round("And now?", second, 0),
        Round("What shape is in image 3?", "x", 2)))
    training_ids, _ = tokenize_conversation(tokenizer, ChatTemplate(), conversation)
    from dsvl_exp.data.template import tokenize_generation_prompt

    assert training_ids[:len(tokenize_generation_prompt(tokenizer, ChatTemplate(), conversation, 2))] == \
        tokenize_generation_prompt(tokenizer, ChatTemplate(), conversation, 2)
    session.clear()
    assert session.next_image_number == 1 and session.rounds == []
    assert session.rendered_prompt("Q?", pictures[:1]).startswith("You are a helpful")


def test_session_rejects_too_many_images_and_missing_files(loaded, pictures):
    session = ChatSession(loaded, GenerationSettings(max_new_tokens=2))
    session.ask("Q?", pictures[:2])
    with pytest.raises(ChatError, match="maximum of 3"):
        session.ask("Q?", pictures[:2])
    with pytest.raises(ChatError, match=r"^image file not found: /nonexistent.png$"):  # the user's file, not a "sample"
        session.ask("Q?", ["/nonexistent.png"])
    assert len(session.rounds) == 1  # failed rounds leave no trace


def test_suite_layouts(tmp_path, pictures):
    reference = tmp_path / "ref.json"
    reference.write_text(json.dumps({"t1": [["Describe.", f"{pictures[0]} {pictures[1]}"], ["And?"]],
                                     "t2": [["Colour?", pictures[2], "green"]]}))
    suite = read_suite(str(reference))
    assert suite.name == "ref" and suite.num_rounds == 3
    assert suite.conversations[0].rounds[0].images == tuple(pictures[:2])
    assert suite.conversations[0].rounds[1].images == () and suite.conversations[0].rounds[1].answer is None
    assert suite.conversations[1].rounds[0].answer == "green"
    native = tmp_path / "native.jsonl"
    native.write_text(json.dumps({"id": "n", "images": [pictures[0], pictures[1]], "rounds": [
        {"question": "<image>\nQ1", "answer": "red"}, {"question": "Q2"}, {"question": "<image>\nQ3", "answer": "x"}]}) + "\n")
    rounds = read_suite(str(native)).conversations[0].rounds
    assert [r.images for r in rounds] == [(pictures[0],), (), (pictures[1],)]
    assert [r.answer for r in rounds] == ["red", None, "x"]
    reference.write_text(json.dumps({"t1": [["Q", "missing.png"]]}))
    with pytest.raises(DataError, match="1 image file"):
        read_suite(str(reference))


def test_scoring():
    assert exact_match(" Red.", "red") and not exact_match("red circle", "red")
    assert contains("a red circle", "red") and not contains("none", "one")
    assert majority_baseline(["one", "two", "One"]) == pytest.approx(2 / 3)


def test_batched_answers_equal_unbatched(loaded, tmp_path):
    suite = read_suite(str(ensure_demo_suite(tmp_path)))
    settings = GenerationSettings(max_new_tokens=6)
    batched = answer_conversations(loaded, list(suite.conversations), settings, batch_size=8)
    unbatched = answer_conversations(loaded, list(suite.conversations), settings, batch_size=1)
    assert batched == unbatched
    assert [len(a) for a in batched] == [3] * 8
    rows = suite_rows(suite, batched)
    assert [r["image_numbers"] for r in rows[:3]] == [[1, 2], [3] if len(rows[1]["images"]) == 1 else [3, 4], []]
    [entry] = accuracy_table({"demo": rows})
    assert entry["rounds"] == entry["scored"] == 24

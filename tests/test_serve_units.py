"""The web demo's pieces without a browser: the streamed answer and the page it builds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dsvl_exp.serve import GenerationFailed, build_demo, streamed_answer


class ScriptedSession:
    """Writes `ids` through the streamer as `generate` would, then returns `answer` (or raises)."""

    def __init__(self, ids: list[int], answer: str | None):
        self.ids, self.answer, self.asked = ids, answer, []

    def ask(self, question, files, streamer):
        self.asked.append((question, files))
        for token in self.ids:
            streamer.put(torch.tensor([token]))
        if self.answer is None:
            raise RuntimeError("out of memory")
        streamer.end()
        return self.answer


def test_streamed_answer_grows_then_ends_with_the_whole_answer(tokenizer):
    ids = tokenizer("a red circle", add_special_tokens=False)["input_ids"]
    session = ScriptedSession(ids, "a red circle")
    answers = list(streamed_answer(session, "what?", ["x.png"], tokenizer))
    assert answers[-1] == "a red circle" and session.asked == [("what?", ["x.png"])]
    assert all(later.startswith(earlier) for earlier, later in zip(answers, answers[1:]))


def test_a_failed_generation_reaches_the_page(tokenizer):
    with pytest.raises(GenerationFailed, match="out of memory"):
        list(streamed_answer(ScriptedSession([], None), "what?", [], tokenizer))


@pytest.mark.slow  # importing gradio takes seconds
def test_build_demo_wires_the_question_box_and_clear_button(tokenizer):
    loaded = SimpleNamespace(source="runs/x/export", max_images=4, tokenizer=tokenizer)
    demo = build_demo(loaded, settings=None)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"chatbot", "question", "clear"} <= ids
    assert len(demo.fns) == 3  # submit, clear, the chatbot's own clear

"""The one-call inference API (`dsvl_exp.inference.answer` / `ChatModel`): the same answers as the
hand-built path and as the chat command, from paths or PIL images."""

import pytest
import torch
from PIL import Image

from conftest import build_tiny_model
from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.template import ChatTemplate, tokenize_generation_prompt
from inference_fixtures import chat_script_answers


def test_chat_model_answers_as_the_hand_built_prompt(tokenizer, shape_pictures):
    from dsvl_exp.inference import ChatModel, answer
    from dsvl_exp.models.vision import clip_image_processor

    model = build_tiny_model(tokenizer, attention="mmca", seed=4).eval()
    model.vision.image_processor = clip_image_processor(32)
    red, blue = str(shape_pictures["circle"]), str(shape_pictures["square"])
    chat = ChatModel.from_model(model, tokenizer, max_new_tokens=6)
    first = chat.ask("What colour is the shape in image 1?", images=[red])
    second = chat.ask("And in image 2?", images=[Image.open(blue)])  # a PIL image, numbered on
    assert chat.history == [("What colour is the shape in image 1?", first), ("And in image 2?", second)]

    # the same by hand: training's template, one <image> per image, generate
    conversation = Conversation("c", (red, blue), (Round("What colour is the shape in image 1?", first, 1),
                                                   Round("And in image 2?", "", 1)))
    ids = torch.tensor([tokenize_generation_prompt(tokenizer, ChatTemplate(), conversation, 1)])
    pixels = model.vision.image_processor([Image.open(red), Image.open(blue)], return_tensors="pt")["pixel_values"]
    new_ids = model.generate(pixels, ids, torch.ones_like(ids), [2], max_new_tokens=6)[0]
    assert second == tokenizer.decode(new_ids, skip_special_tokens=True).strip()

    assert answer(chat, [red], "What colour is the shape in image 1?", max_new_tokens=6) == first
    assert len(chat.history) == 2  # answer() used a fresh conversation
    chat.reset()
    assert chat.history == []
    with pytest.raises(TypeError, match="a path, 'base64:' data or a PIL image"):
        chat.ask("?", images=[42])


@pytest.mark.slow
def test_answer_from_a_run_directory_equals_the_chat_command(trained_run, shape_pictures, tmp_path):
    from dsvl_exp.inference import answer

    green = str(shape_pictures["triangle"])
    question = "What colour is the shape in image 1?"
    [expected] = chat_script_answers(trained_run, [{"images": [green], "question": question}], tmp_path)
    assert answer(trained_run, [green], question, max_new_tokens=8) == expected["answer"] == "green"


def test_chat_model_passes_beam_search_and_repetition_penalty_to_generate(tokenizer, shape_pictures):
    from dsvl_exp.inference import ChatModel
    from dsvl_exp.models.vision import clip_image_processor

    model = build_tiny_model(tokenizer, attention="mmca", seed=4).eval()
    model.vision.image_processor = clip_image_processor(32)
    red = str(shape_pictures["circle"])
    question = "What colour is the shape in image 1?"
    conversation = Conversation("c", (red,), (Round(question, "", 1),))
    ids = torch.tensor([tokenize_generation_prompt(tokenizer, ChatTemplate(), conversation, 0)])
    pixels = model.vision.image_processor([Image.open(red)], return_tensors="pt")["pixel_values"]
    for settings in ({"repetition_penalty": 1e4}, {"num_beams": 3}):
        new_ids = model.generate(pixels, ids, torch.ones_like(ids), [1], max_new_tokens=6, **settings)[0]
        expected = tokenizer.decode(new_ids, skip_special_tokens=True).strip()
        assert ChatModel.from_model(model, tokenizer, max_new_tokens=6, **settings).ask(question, images=[red]) == expected
        if "repetition_penalty" in settings:  # no token of the prompt or of the answer so far comes again
            assert len(set(new_ids)) == len(new_ids) and not set(new_ids) & set(ids[0].tolist())

from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.template import (
    DEFAULT_SYSTEM_PROMPT,
    IGNORE_INDEX,
    ChatTemplate,
    tokenize_conversation,
    tokenize_generation_prompt,
)

CONVERSATION = Conversation(
    id="c",
    images=("a.png", "b.png", "c.png"),
    rounds=(
        Round("What colour is the shape in image 1?", "red", num_images=1),
        Round("How many images show a circle?", "two", num_images=2),
        Round("What shape is in image 3?", "square", num_images=0),
    ),
)


def test_render_matches_the_reference_template_exactly():
    rendered = ChatTemplate().render_conversation(CONVERSATION)
    assert rendered[0] == (
        DEFAULT_SYSTEM_PROMPT
        + "### Image 1:\n<image>\n\n### Question:\nWhat colour is the shape in image 1?\n\n### Answer:\n",
        "red",
    )
    assert rendered[1][0] == (
        "### Image 2:\n<image>\n### Image 3:\n<image>\n\n### Question:\nHow many images show a circle?\n\n### Answer:\n"
    )
    assert rendered[2][0] == "### Question:\nWhat shape is in image 3?\n\n### Answer:\n"


def test_only_answers_and_eos_are_supervised(tokenizer):
    ids, labels = tokenize_conversation(tokenizer, ChatTemplate(), CONVERSATION)
    assert len(ids) == len(labels)
    supervised = [t for t, l in zip(ids, labels) if l != IGNORE_INDEX]
    expected = []
    for answer in ("red", "two", "square"):
        expected += tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert supervised == expected
    # every round starts with BOS, as the reference tokenizes rounds separately
    assert ids.count(tokenizer.bos_token_id) == 3 and ids[0] == tokenizer.bos_token_id
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert ids.count(image_id) == 3
    assert tokenizer.decode(supervised, skip_special_tokens=True) == "redtwosquare"


def test_generation_prompt_is_history_plus_open_question(tokenizer):
    full, _ = tokenize_conversation(tokenizer, ChatTemplate(), CONVERSATION)
    prompt = tokenize_generation_prompt(tokenizer, ChatTemplate(), CONVERSATION, 2)
    answer = tokenizer("square", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert prompt + answer == full

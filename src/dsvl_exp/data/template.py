"""The DeepSpeed-VisualChat prompt template, image numbering and label masking.

A rendered round (the system prompt only on the first round):

    {system}### Image 1:\n<image>\n### Image 2:\n<image>\n\n### Question:\n{q}\n\n### Answer:\n{answer}</s>

Rounds are tokenized separately, each starting with BOS, as the reference does. Only the
answer tokens and the EOS that ends them are supervised; everything else gets label -100.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsvl_exp.constants import DEFAULT_SYSTEM_PROMPT, IGNORE_INDEX, IMAGE_TAG_TOKEN, IMAGE_TOKEN  # noqa: F401 (re-exported)
from dsvl_exp.data.conversation import Conversation


@dataclass(frozen=True)
class ChatTemplate:
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    def image_block(self, num_images: int, first_image_number: int) -> str:
        if num_images == 0:
            return ""
        tags = "".join(
            f"### Image {first_image_number + i}:\n{IMAGE_TOKEN}\n" for i in range(num_images)
        )
        return tags + "\n"

    def render_prompt(
        self, question: str, num_images: int, first_image_number: int, first_round: bool
    ) -> str:
        system = self.system_prompt if first_round else ""
        block = self.image_block(num_images, first_image_number)
        return f"{system}{block}### Question:\n{question}\n\n### Answer:\n"

    def render_conversation(self, conversation: Conversation) -> list[tuple[str, str]]:
        """(prompt, answer) text for every round, with running image numbers."""
        rendered, next_image = [], 1
        for index, round_ in enumerate(conversation.rounds):
            prompt = self.render_prompt(round_.question, round_.num_images, next_image, index == 0)
            rendered.append((prompt, round_.answer))
            next_image += round_.num_images
        return rendered


def tokenize_round(tokenizer, prompt: str, answer: str | None) -> tuple[list[int], list[int]]:
    """Token ids and labels for one round: BOS + prompt (masked) + answer + EOS (supervised).

    With `answer=None` only the prompt is returned (for generation).
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids
    if answer is None:
        return prompt_ids, [IGNORE_INDEX] * len(prompt_ids)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def tokenize_conversation(
    tokenizer, template: ChatTemplate, conversation: Conversation
) -> tuple[list[int], list[int]]:
    input_ids: list[int] = []
    labels: list[int] = []
    for prompt, answer in template.render_conversation(conversation):
        ids, lab = tokenize_round(tokenizer, prompt, answer)
        input_ids += ids
        labels += lab
    return input_ids, labels


def tokenize_generation_prompt(
    tokenizer, template: ChatTemplate, conversation: Conversation, round_index: int
) -> list[int]:
    """Ids of rounds [0, round_index) with their answers, then round `round_index`'s prompt."""
    rendered = template.render_conversation(conversation)
    ids: list[int] = []
    for prompt, answer in rendered[:round_index]:
        ids += tokenize_round(tokenizer, prompt, answer)[0]
    ids += tokenize_round(tokenizer, rendered[round_index][0], None)[0]
    return ids

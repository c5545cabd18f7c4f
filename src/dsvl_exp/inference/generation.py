"""Answer the next question of one or more conversations in one batched `generate` call.

A conversation so far is a `data.conversation.Conversation` whose last round is the question to
answer (its answer field is ignored); earlier rounds carry the answers the model sees as
history. Prompts are tokenized with `tokenize_generation_prompt`, the function training's own
answer-accuracy eval uses, so the rendering (system prompt on the first round, running
`### Image k:` numbers, one BOS per round) is training's by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from dsvl_exp.data.collate import left_padded
from dsvl_exp.data.conversation import Conversation
from dsvl_exp.data.template import ChatTemplate, tokenize_generation_prompt
from dsvl_exp.inference.images import ImageCache


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    greedy: bool = True
    temperature: float = 0.2
    top_p: float = 1.0
    top_k: int | None = None  # None: no top-k cut (sampling)
    repetition_penalty: float = 1.0
    num_beams: int = 1  # beam search (no streaming)

    @property
    def do_sample(self) -> bool:
        # temperature 0 means argmax, as in most chat front ends
        return not self.greedy and self.temperature > 0

    def generate_kwargs(self) -> dict:
        """These settings in the names transformers' `generate` takes."""
        return {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": self.top_k, "repetition_penalty": self.repetition_penalty,
                "num_beams": self.num_beams}


@dataclass(frozen=True)
class Completion:
    """One generated answer: its new token ids (EOS excluded) and the prompt's length in tokens
    (text tokens plus the tokens the images take in the decoder)."""

    token_ids: list[int]
    prompt_tokens: int


@torch.no_grad()
def complete_batch(
    loaded,
    conversations: list[Conversation],
    settings: GenerationSettings,
    template: ChatTemplate | None = None,
    streamer=None,
) -> list[Completion]:
    """The one call every front end (chat, evaluate, serve, the API server) generates through:
    the next answer of each conversation with `loaded` (inference.loading.LoadedModel), in one
    batched decode. `template` replaces the model's own (a client's system prompt)."""
    if not conversations:
        return []
    model, tokenizer, template = loaded.model, loaded.tokenizer, template or loaded.template
    prompts = [tokenize_generation_prompt(tokenizer, template, conv, len(conv.rounds) - 1) for conv in conversations]
    input_ids, attention_mask = left_padded(prompts, tokenizer.pad_token_id)
    pixels = [loaded.images.pixel_values(conv.images, conv.id) for conv in conversations]
    device = next(model.parameters()).device
    new_ids = model.generate(
        images=torch.cat(pixels).to(device),
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        image_num=[len(conv.images) for conv in conversations],
        streamer=streamer,
        **settings.generate_kwargs(),
    )
    per_image = model.tokens_per_image
    return [Completion(list(ids), len(prompt) + per_image * len(conv.images))
            for ids, prompt, conv in zip(new_ids, prompts, conversations)]


def answer_batch(
    model,
    tokenizer,
    template: ChatTemplate,
    images: ImageCache,
    conversations: list[Conversation],
    settings: GenerationSettings,
    streamer=None,
) -> list[str]:
    """The answer to the last round of every conversation (stripped text, special tokens dropped)."""
    loaded = SimpleNamespace(model=model, tokenizer=tokenizer, template=template, images=images)
    completions = complete_batch(loaded, conversations, settings, streamer=streamer)
    return [tokenizer.decode(c.token_ids, skip_special_tokens=True).strip() for c in completions]

"""One call from a notebook or script: no input_ids, image_num or template to build by hand.

    from dsvl_exp.inference import ChatModel, answer

    answer("outputs/run/export", ["red_circle.png"], "What colour is the shape in image 1?")

    chat = ChatModel.load("outputs/run/export")        # model + tokenizer + template + image processor
    chat.ask("What colour is the shape in image 1?", images=["red_circle.png"])
    chat.ask("And in image 2?", images=[Image.open("blue_square.png")])   # numbered on: image 2
    chat.reset()

Images are paths, `base64:` data or PIL images. A conversation renders exactly as training does
(inference/session.py), and `generate` is the model's own (transformers' `GenerationMixin`).
"""

from __future__ import annotations

import base64
import io
from dataclasses import replace
from pathlib import Path

from dsvl_exp.inference.generation import GenerationSettings
from dsvl_exp.inference.loading import LoadedModel, load_model, wrap_model
from dsvl_exp.inference.session import ChatSession


def image_entry(image) -> str:
    """A path (str or Path), `base64:` data, or a PIL image (passed on as PNG `base64:` data)."""
    if isinstance(image, (str, Path)):
        return str(image)
    if hasattr(image, "save"):  # PIL.Image.Image
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "base64:" + base64.b64encode(buffer.getvalue()).decode()
    raise TypeError(f"an image is a path, 'base64:' data or a PIL image, not {type(image).__name__}")


class ChatModel:
    """A model with its tokenizer, template and image processor, and one conversation."""

    def __init__(self, loaded: LoadedModel, **settings):
        """`settings`: GenerationSettings fields (max_new_tokens, greedy, temperature, top_p)."""
        self.session = ChatSession(loaded, replace(GenerationSettings(), **settings))

    @classmethod
    def load(cls, model: str | Path, device: str | None = None, **settings) -> "ChatModel":
        """`model`: an export folder or a run directory (as the `chat` command takes)."""
        return cls(load_model(model, device=device), **settings)

    @classmethod
    def from_model(cls, model, tokenizer, **settings) -> "ChatModel":
        """An in-memory DSVLModel and its tokenizer (e.g. just trained in this notebook)."""
        return cls(wrap_model(model, tokenizer), **settings)

    def ask(self, question: str, images=(), streamer=None) -> str:
        """The answer to `question`, with `images` attached to it (numbered after earlier ones)."""
        return self.session.ask(question, [image_entry(image) for image in images], streamer=streamer)

    def reset(self) -> None:
        self.session.clear()

    @property
    def history(self) -> list[tuple[str, str]]:
        """(question, answer) of every round so far."""
        return [(round_.question, round_.answer) for round_ in self.session.rounds]


def answer(model, images, question: str, **settings) -> str:
    """One question about `images` in a fresh conversation. `model`: a path (export folder or run
    directory), a `LoadedModel` or a `ChatModel` (its conversation is left untouched)."""
    if isinstance(model, ChatModel):
        model = model.session.loaded
    chat = ChatModel(model, **settings) if isinstance(model, LoadedModel) else ChatModel.load(model, **settings)
    return chat.ask(question, images)

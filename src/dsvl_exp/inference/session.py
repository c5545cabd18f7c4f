"""A multi-round, multi-image chat with one model: the history as training renders it.

Each round attaches zero or more images; they are numbered on from the images of earlier
rounds (`### Image 3:` follows two earlier images), exactly as `ChatTemplate` numbers a training
conversation. The model's answers join the history as the answers of their rounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.errors import UserError
from dsvl_exp.data.errors import DataError
from dsvl_exp.inference.generation import GenerationSettings, answer_batch
from dsvl_exp.inference.loading import LoadedModel


CHAT_OWNER = "chat"  # the conversation's id, as image errors name it


class ChatError(UserError, ValueError):
    """A user mistake in a chat round (too many images, empty question): shown, not a traceback."""


@dataclass
class ChatSession:
    loaded: LoadedModel
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    rounds: list[Round] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    def clear(self) -> None:
        self.rounds.clear()
        self.images.clear()

    @property
    def next_image_number(self) -> int:
        return len(self.images) + 1

    def check_round(self, question: str, new_images: list[str]) -> None:
        if not question.strip():
            raise ChatError("the question is empty; type a question (images attach to the next question)")
        limit = self.loaded.max_images
        if len(self.images) + len(new_images) > limit:
            raise ChatError(
                f"{len(self.images)} image(s) in the conversation plus {len(new_images)} new exceed the model's "
                f"maximum of {limit} per conversation; /clear to start a new conversation"
            )
        for entry in new_images:  # read now, so a bad file fails before it joins the history
            try:
                self.loaded.images.one(entry, CHAT_OWNER)
            except DataError as error:  # "sample chat: ..." names a training sample; here it is the user's file
                raise ChatError(str(error).removeprefix(f"sample {CHAT_OWNER}: ")) from None

    def pending(self, question: str, new_images: list[str]) -> Conversation:
        """The conversation so far plus this round's question (its answer still empty)."""
        rounds = (*self.rounds, Round(question=question.strip(), answer="", num_images=len(new_images)))
        return Conversation(id="chat", images=(*self.images, *new_images), rounds=rounds)

    def ask(self, question: str, new_images: list[str] | None = None, streamer=None) -> str:
        new_images = list(new_images or [])
        self.check_round(question, new_images)
        conversation = self.pending(question, new_images)
        loaded = self.loaded
        [answer] = answer_batch(loaded.model, loaded.tokenizer, loaded.template, loaded.images, [conversation],
                                self.settings, streamer=streamer)
        self.rounds.append(Round(question=question.strip(), answer=answer, num_images=len(new_images)))
        self.images.extend(new_images)
        return answer

    def rendered_prompt(self, question: str, new_images: list[str] | None = None) -> str:
        """The text the model reads for this question, before tokenization (BOS per round aside)."""
        conversation = self.pending(question, list(new_images or []))
        rendered = self.loaded.template.render_conversation(conversation)
        eos = self.loaded.tokenizer.eos_token
        return "".join(f"{prompt}{answer}{eos}" for prompt, answer in rendered[:-1]) + rendered[-1][0]

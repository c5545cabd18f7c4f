"""The in-memory form every data format is converted to."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Round:
    """One question/answer exchange. `num_images` images are shown just before the question."""

    question: str
    answer: str
    num_images: int = 0


@dataclass(frozen=True)
class Conversation:
    """A multi-image, multi-round conversation.

    `images` holds one entry per image in document order (a path, or `base64:<data>`);
    round k shows the next `rounds[k].num_images` of them.
    """

    id: str
    images: tuple[str, ...]
    rounds: tuple[Round, ...]
    source: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def num_images(self) -> int:
        return sum(r.num_images for r in self.rounds)

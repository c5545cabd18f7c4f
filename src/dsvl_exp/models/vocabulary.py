"""The small vocabulary every layer shares (as LLaVA's `constants.py`): label masking, the image
placeholder tokens, the default system prompt, padding arithmetic. It imports nothing, so it
travels with the model code into an export folder (`dsvl_exp.constants` re-exports it)."""

from __future__ import annotations

IGNORE_INDEX = -100  # label of every position that is not trained (torch's cross-entropy default)
IMAGE_TOKEN = "<image>"  # one per image in a rendered prompt; the model replaces it by the image's tokens
IMAGE_TAG_TOKEN = "### Image:"
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using "
    "natural language.\n\n"
)


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= `value` (sequence padding)."""
    return -(-value // multiple) * multiple

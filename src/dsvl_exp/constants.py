"""The small vocabulary every layer shares (as LLaVA's `constants.py`). Defined in
`models/vocabulary.py`, which travels with the model code into an export folder; re-exported here
so the rest of dsvl_exp keeps one name for it."""

from dsvl_exp.models.vocabulary import DEFAULT_SYSTEM_PROMPT, IGNORE_INDEX, IMAGE_TAG_TOKEN, IMAGE_TOKEN, round_up

__all__ = ["DEFAULT_SYSTEM_PROMPT", "IGNORE_INDEX", "IMAGE_TAG_TOKEN", "IMAGE_TOKEN", "round_up"]

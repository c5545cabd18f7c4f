"""The decoder's tokenizer extended with the DeepSpeed-VisualChat special tokens."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AddedToken, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from dsvl_exp.models.vocabulary import IMAGE_TAG_TOKEN, IMAGE_TOKEN

BUNDLED_TOKENIZER = Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer"
PAD_TOKEN = "<PAD>"


def load_tokenizer(path: str | None = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer (the bundled tiny one when `path` is None) and add the special tokens.

    Tokens are added in the reference's order, so a LLaMA-2 vocabulary becomes
    `### Image:`=32000, `<image>`=32001, `<PAD>`=32002 and its checkpoints line up. Unlike
    the reference, padding uses the real `<PAD>` token, not EOS.
    """
    source = Path(path).expanduser() if path else BUNDLED_TOKENIZER
    # an export folder's config.json describes the DSVL model, not a transformers architecture:
    # hand AutoTokenizer an empty config instead of letting it try to read that one
    extra = {"config": PretrainedConfig()} if _is_dsvl_folder(source) else {}
    tokenizer = AutoTokenizer.from_pretrained(str(source), **extra)
    tokenizer.padding_side = "right"
    tokenizer.add_tokens(
        [AddedToken(IMAGE_TAG_TOKEN, special=True, normalized=False),
         AddedToken(IMAGE_TOKEN, special=True, normalized=False)],
        special_tokens=True,
    )
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer at {path or BUNDLED_TOKENIZER} has no EOS token; answers must end with one")
    return tokenizer


def _is_dsvl_folder(folder: Path) -> bool:
    from dsvl_exp.models.config import MODEL_TYPE

    try:
        return json.loads((folder / "config.json").read_text()).get("model_type") == MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def image_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

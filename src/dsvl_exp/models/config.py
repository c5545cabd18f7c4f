"""DSVLConfig: everything that describes a DSVL model, as an export's config.json holds it.

A transformers `PretrainedConfig`, so the folder loads through the Auto classes
(`trust_remote_code=True`: this file travels in the folder). The composed parts keep their own
descriptions as dictionaries: `vision` ({"type": "clip", "clip_config": {...}, "feature_layer": -1}
or {"type": "qwen", ...}), `projection` ({"type": "baseline" | "vit" | "perceiver", its own
settings}) and `decoder` ({"type": "llama", "llama_config": {...}}): a CLIP or the Qwen-VL tower,
and an HF LLaMA, each rebuilt by its own builder (models/build.py).

Format versions: 1 (dsvl_exp before the transformers model class: no code in the folder, not
loadable by the Auto classes) and 2 (this). Both load with `DSVLModel.from_pretrained`; a format-1
folder is upgraded to 2 by `python -m dsvl_exp.export OLD_FOLDER --out NEW_FOLDER`."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import LlamaConfig, PretrainedConfig

try:  # inside dsvl_exp: the project's user errors; the copy that travels in an export folder raises the builtin kinds
    from dsvl_exp.errors import BadFileError
except ImportError:
    BadFileError = ValueError

FORMAT_VERSION = 2
MODEL_TYPE = "dsvl"


class DSVLConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(
        self,
        vision: dict | None = None,
        projection: dict | None = None,
        decoder: dict | None = None,
        attention: str = "causal",  # causal | mmca | mmca_legacy | mmca_flex
        image_order: str = "forward",  # forward | reversed_legacy
        image_token_id: int | None = None,
        pad_token_id: int | None = None,
        eos_token_id: int | None = None,
        tokens_per_image: int | None = None,  # checked against the architecture when building
        pad_to_multiple_of: int = 8,
        adapters: list[str] | None = None,  # parts with peft adapters in adapters/<part>/
        format_version: int = FORMAT_VERSION,
        **kwargs,
    ):
        self.vision = vision or {}
        self.projection = projection or {}
        self.decoder = decoder or {}
        self.attention = attention
        self.image_order = image_order
        self.image_token_id = image_token_id
        self.tokens_per_image = tokens_per_image
        self.pad_to_multiple_of = pad_to_multiple_of
        self.adapters = list(adapters or [])
        self.format_version = format_version
        kwargs.setdefault("tie_word_embeddings", False)  # the decoder's own config says whether it ties
        super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id, **kwargs)
        llama = self.decoder.get("llama_config") or {}
        # what generation utilities read from a model's config
        self.vocab_size = llama.get("vocab_size")
        self.hidden_size = llama.get("hidden_size")
        self.num_hidden_layers = llama.get("num_hidden_layers")

    def get_text_config(self, decoder=None, encoder=None):
        """The decoder's LlamaConfig (what generation and caches read: layers, vocabulary)."""
        llama = self.decoder.get("llama_config")
        return LlamaConfig.from_dict(llama) if llama else self

    def to_dict(self) -> dict:
        data = super().to_dict()
        for derived in ("vocab_size", "hidden_size", "num_hidden_layers"):
            data.pop(derived, None)
        return data

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json_string(use_diff=False))

    @classmethod
    def load(cls, path: Path) -> "DSVLConfig":
        """Read a config.json of format 1 or 2, with a message that names the file on any mismatch."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise BadFileError(f"{path} is not a readable DSVL config.json: {error}") from error
        if data.get("model_type") != MODEL_TYPE:
            raise BadFileError(f"{path}: model_type={data.get('model_type')!r}, expected {MODEL_TYPE!r} "
                               "(is this folder an export of dsvl_exp?)")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise BadFileError(f"{path}: format_version {data['format_version']} is newer than this dsvl_exp "
                               f"reads ({FORMAT_VERSION}); upgrade dsvl_exp")
        return cls.from_dict(data)

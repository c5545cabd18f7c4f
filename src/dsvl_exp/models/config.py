"""DSVLConfig: everything that describes a DSVLModel, as an export's config.json holds it.

Written by hand rather than as a transformers `PretrainedConfig`: DSVLModel composes parts that
each come from their own builder (an HF CLIP or the Qwen-VL tower written here, an HF LLaMA, a
projection), and the one thing a composite `PretrainedConfig` would add, loading through
transformers' Auto classes, needs the model registered or `trust_remote_code`. The HF parts keep
their own config dictionaries inside (`vision.clip_config`, `decoder.llama_config`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from dsvl_exp.errors import BadFileError

FORMAT_VERSION = 1
MODEL_TYPE = "dsvl"


@dataclass
class DSVLConfig:
    vision: dict  # {"type": "clip", "clip_config": {...}, "feature_layer": -1} or {"type": "qwen", ...}
    projection: dict  # {"type": "baseline" | "vit" | "perceiver", its own settings (num_queries)}
    decoder: dict  # {"type": "llama", "llama_config": {...}}
    attention: str  # causal | mmca | mmca_legacy
    image_order: str  # forward | reversed_legacy
    image_token_id: int
    pad_token_id: int
    eos_token_id: int
    tokens_per_image: int | None = None  # checked against the architecture when loading
    pad_to_multiple_of: int = 8
    dtype: str = "float32"  # of the saved weights; from_pretrained builds the model in it
    adapters: list[str] = field(default_factory=list)  # parts with peft adapters in adapters/<part>/
    model_type: str = MODEL_TYPE
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    @classmethod
    def load(cls, path: Path) -> "DSVLConfig":
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
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadFileError(f"{path}: unknown keys {unknown}")
        return cls(**data)

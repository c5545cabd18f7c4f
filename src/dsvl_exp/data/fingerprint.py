"""A data fingerprint: sha256 over what decides the training data, computed once per run.

It covers the annotation files' bytes, the image list (paths, or the base64 data itself), the
template (system prompt and the rendered layout of a probe conversation) and the tokenizer
(its vocabulary and special tokens). Image file contents are not read: hashing every image of a
large set would take longer than the run's start-up; their paths and sizes stand in for them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.template import ChatTemplate


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def images_sha256(conversations: Iterable[Conversation]) -> str:
    digest = hashlib.sha256()
    sizes: dict[str, bytes] = {}  # one stat per distinct file: large sets show each image many times
    for conversation in conversations:
        for entry in conversation.images:
            if entry not in sizes:
                if entry.startswith("base64:"):  # the data's digest, not a second copy of it
                    sizes[entry] = hashlib.sha256(entry.encode()).digest() + b"\0"
                else:
                    size = str(os.path.getsize(entry)).encode() if os.path.isfile(entry) else b""
                    sizes[entry] = entry.encode() + size + b"\0"
            digest.update(sizes[entry])
    return digest.hexdigest()


def template_sha256(template: ChatTemplate) -> str:
    probe = Conversation("probe", ("a", "b"), (Round("q1", "a1", 1), Round("q2", "a2", 1)))
    return hashlib.sha256(json.dumps(template.render_conversation(probe)).encode()).hexdigest()


def tokenizer_sha256(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    special = {k: str(v) for k, v in tokenizer.special_tokens_map.items()}
    return hashlib.sha256(json.dumps([vocab, special, type(tokenizer).__name__]).encode()).hexdigest()


def data_fingerprint(annotation_files: Sequence[Path], train: Sequence[Conversation], eval: Sequence[Conversation],
                     template: ChatTemplate, tokenizer) -> dict:
    parts = {
        "annotation_files": {str(p): file_sha256(p) for p in sorted(set(map(Path, annotation_files)))},
        "train_images": images_sha256(train),
        "eval_images": images_sha256(eval),
        "num_train": len(train),
        "num_eval": len(eval),
        "template": template_sha256(template),
        "tokenizer": tokenizer_sha256(tokenizer),
    }
    parts["sha256"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return parts

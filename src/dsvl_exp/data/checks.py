"""Checks run on every conversation before training starts."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from dsvl_exp.data.conversation import Conversation
from dsvl_exp.data.errors import DataError

log = logging.getLogger(__name__)
MISSING_IMAGE_POLICIES = ("error", "skip")


def check_images_per_sample(conversations: Sequence[Conversation], max_images: int) -> None:
    for conversation in conversations:
        if conversation.num_images > max_images:
            raise DataError(
                f"{conversation.source or conversation.id}: sample {conversation.id} has {conversation.num_images} images, "
                f"more than data.max_images_per_sample={max_images}; split the sample or raise the limit"
            )


def image_problem(entry: str, read_header: bool = True) -> str | None:
    """Why a path image cannot be used, or None. Reads at most the file header."""
    if entry.startswith("base64:"):
        return None  # decoded lazily when the sample is loaded
    if not Path(entry).is_file():
        return "image file not found"
    if not read_header:
        return None
    try:
        with Image.open(entry):
            return None
    except (OSError, ValueError) as error:
        return f"unreadable or corrupt image ({error})"


def check_image_files(conversations: Sequence[Conversation], on_missing_image: str,
                      read_headers: bool = True) -> tuple[list[Conversation], int]:
    """Conversations whose images all exist, and how many were skipped (policy `skip`).

    A missing file fails under `error` and is skipped (counted, logged) under `skip`; a
    corrupt file always fails. `read_headers=False` only checks that files exist (for very
    large sets on slow storage; a corrupt image then fails when its sample is loaded)."""
    if on_missing_image not in MISSING_IMAGE_POLICIES:
        raise DataError(f"data.on_missing_image={on_missing_image!r}; choose one of {MISSING_IMAGE_POLICIES}")
    kept, skipped = [], 0
    for conversation in conversations:
        problems = [(entry, image_problem(entry, read_headers)) for entry in conversation.images]
        problems = [(entry, problem) for entry, problem in problems if problem]
        if not problems:
            kept.append(conversation)
            continue
        entry, problem = problems[0]
        where, sample = conversation.source or conversation.id, f"(sample {conversation.id})"
        if problem != "image file not found":
            raise DataError(f"{where}: {problem}: {entry} {sample}; replace the file or remove the sample")
        if on_missing_image == "error":
            raise DataError(
                f"{where}: image file not found: {entry} {sample}; fix the path (relative paths are relative to the "
                "data file or image_dir) or set data.on_missing_image=skip"
            )
        skipped += 1
        log.warning("%s: skipping %s, image file not found: %s", where, sample, entry)
    return kept, skipped

"""Checks run on every conversation before training starts: image count and image files.

Images are checked once per distinct entry (the reference mix shows the same COCO image in many
samples), split across ranks and, within a rank, across threads: Pillow releases the GIL while
it decodes and reading headers waits on storage, so threads overlap both.

`data.verify_images`:
    header  every image's header is read (a truncated file whose header is intact passes)
    full    every image is decoded once (catches a JPEG cut inside its scan data)
    false   only that files exist (for very large sets on slow storage)
Base64 images are decoded and checked the same way; a `missing:` entry (an image id a reader
could not find) counts as a missing file.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from itertools import chain

from PIL import Image
from tqdm.auto import tqdm

from dsvl_exp.data.conversation import Conversation
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.images import MISSING_PREFIX, decode_base64, image_label, too_large
from dsvl_exp.data.sharding import map_sharded

log = logging.getLogger(__name__)
MISSING_IMAGE_POLICIES = ("error", "skip")
MISSING = "image file not found"


class VerifyImages(str, Enum):
    header = "header"
    full = "full"
    false = "false"


def verify_mode(value) -> VerifyImages:
    """`data.verify_images` as given: header | full | false (true is kept as an alias of header)."""
    if isinstance(value, VerifyImages):
        return value
    if value is True or str(value).lower() == "true":
        return VerifyImages.header
    if value is False or value is None or str(value).lower() == "false":
        return VerifyImages.false
    try:
        return VerifyImages(str(value).lower())
    except ValueError:
        raise DataError(f"data.verify_images={value!r}; choose one of header, full, false") from None


def check_images_per_sample(conversations: Sequence[Conversation], max_images: int,
                            counts: Sequence[int] | None = None) -> None:
    """`counts`: the conversations' image counts when already computed."""
    counts = [c.num_images for c in conversations] if counts is None else counts
    if not counts or max(counts) <= max_images:
        return
    for conversation in conversations:
        if conversation.num_images > max_images:
            raise DataError(
                f"{conversation.source or conversation.id}: sample {conversation.id} has {conversation.num_images} images, "
                f"more than data.max_images_per_sample={max_images}; split the sample or raise the limit"
            )


def image_problem(entry: str, mode: VerifyImages = VerifyImages.header) -> str | None:
    """Why an image entry cannot be used, or None."""
    if entry.startswith(MISSING_PREFIX):
        return MISSING
    is_base64 = entry.startswith("base64:")
    if not is_base64 and os.path.isdir(entry):
        return "the image path is a directory, not an image file"
    if not is_base64 and not os.path.isfile(entry):
        return MISSING
    if mode is VerifyImages.false:
        return None
    try:
        with Image.open(io.BytesIO(decode_base64(entry)) if is_base64 else entry) as image:
            if mode is VerifyImages.full:
                image.load()
        return None
    except Image.DecompressionBombError as error:
        return too_large(error)
    except (OSError, ValueError, SyntaxError) as error:
        return f"unreadable or corrupt image ({error})"


def problems_of(entries: Sequence[str], mode: VerifyImages) -> list[str | None]:
    if len(entries) < 64:
        return [image_problem(entry, mode) for entry in entries]
    with ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
        results = pool.map(lambda entry: image_problem(entry, mode), entries, chunksize=64)
        return list(tqdm(results, total=len(entries), desc=f"verify images ({mode.value})", unit="img", disable=None, leave=False))


def image_name(conversation: Conversation, index: int) -> str:
    entry, names = conversation.images[index], conversation.meta.get("image_names")
    return names[index] if names and not entry.startswith(MISSING_PREFIX) else image_label(entry)


def check_image_files(conversations: Sequence[Conversation], on_missing_image: str,
                      verify_images="header") -> tuple[list[Conversation], int]:
    """Conversations whose images are all usable, and how many were skipped (policy `skip`).

    A missing image fails under `error` and is skipped (counted, logged) under `skip`; a
    corrupt one always fails."""
    if on_missing_image not in MISSING_IMAGE_POLICIES:
        raise DataError(f"data.on_missing_image={on_missing_image!r}; choose one of {MISSING_IMAGE_POLICIES}")
    mode = verify_mode(verify_images)
    distinct = list(dict.fromkeys(chain.from_iterable(conversation.images for conversation in conversations)))
    problem = {entry: why for entry, why in zip(distinct, map_sharded(distinct, lambda part: problems_of(part, mode))) if why}
    if not problem:
        return list(conversations), 0
    kept, skipped = [], 0
    for conversation in conversations:
        bad = next((k for k, entry in enumerate(conversation.images) if entry in problem), None)
        if bad is None:
            kept.append(conversation)
            continue
        why, name = problem[conversation.images[bad]], image_name(conversation, bad)
        where, sample = conversation.source or conversation.id, f"(sample {conversation.id})"
        if why != MISSING:
            raise DataError(f"{where}: {why}: {name} {sample}; replace the image or remove the sample")
        what = f"image not found: {name[len(MISSING_PREFIX):]}" if name.startswith(MISSING_PREFIX) else f"{MISSING}: {name}"
        if on_missing_image == "error":
            raise DataError(f"{where}: {what} {sample}; fix the path (relative paths are relative to the data file or "
                            "image_dir) or set data.on_missing_image=skip")
        skipped += 1
        log.warning("%s: skipping %s, %s", where, sample, what)
    return kept, skipped

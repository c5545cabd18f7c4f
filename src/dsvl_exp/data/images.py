"""Loading images from paths or base64 data, with errors that name the sample."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from dsvl_exp.data.errors import DataError

# An image a reader could not find (e.g. an unknown MIMIC-IT image id): `missing:<what and where>`.
# It follows data.on_missing_image like a missing file.
MISSING_PREFIX = "missing:"


def missing_image(description: str) -> str:
    return MISSING_PREFIX + description


def image_label(entry: str) -> str:
    """How an image entry is shown in messages (never the base64 data itself)."""
    return "<base64 data>" if entry.startswith("base64:") else entry


def decode_base64(entry: str) -> bytes:
    return base64.b64decode(entry[len("base64:"):])


def too_large(error: Image.DecompressionBombError) -> str:
    """Pillow refuses images over 2 x Image.MAX_IMAGE_PIXELS (a decompression bomb guard)."""
    return f"image too large to decode safely ({error}); resize it (Pillow's limit: PIL.Image.MAX_IMAGE_PIXELS)"


def load_image(entry: str, sample: str) -> Image.Image:
    try:
        if entry.startswith("base64:"):
            image = Image.open(io.BytesIO(decode_base64(entry)))
        else:
            if Path(entry).is_dir():
                raise DataError(f"sample {sample}: image path is a directory, not an image file: {entry}")
            if entry.startswith(MISSING_PREFIX) or not Path(entry).is_file():
                raise DataError(f"sample {sample}: image file not found: {entry}")
            image = Image.open(entry)
        return image.convert("RGB")
    except Image.DecompressionBombError as error:
        raise DataError(f"sample {sample}: {image_label(entry)}: {too_large(error)}") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"sample {sample}: cannot read image {image_label(entry)}: {error}") from None

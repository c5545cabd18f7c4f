"""Loading images from paths or base64 data, with errors that name the sample."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from dsvl_exp.data.errors import DataError


def load_image(entry: str, sample: str) -> Image.Image:
    try:
        if entry.startswith("base64:"):
            image = Image.open(io.BytesIO(base64.b64decode(entry[len("base64:"):])))
        else:
            if not Path(entry).is_file():
                raise DataError(f"sample {sample}: image file not found: {entry}")
            image = Image.open(entry)
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        if isinstance(error, DataError):
            raise
        shown = entry if not entry.startswith("base64:") else "<base64 data>"
        raise DataError(f"sample {sample}: cannot read image {shown}: {error}") from None

"""Images for inference: read (path or `base64:` data, via data/images.py), preprocessed by the
model's own image processor, and kept per path so a conversation's earlier images are not
re-read every round (the whole history is re-encoded by the model each round, as in the
reference's chat, but the files are read once)."""

from __future__ import annotations

import hashlib

import torch

from dsvl_exp.data.images import load_image


class ImageCache:
    def __init__(self, image_processor, max_entries: int = 256):
        self.image_processor = image_processor
        self.max_entries = max_entries
        self._pixels: dict[str, torch.Tensor] = {}

    @property
    def empty(self) -> torch.Tensor:
        size = self.image_processor.crop_size
        return torch.zeros(0, 3, size["height"], size["width"])

    def one(self, entry: str, owner: str) -> torch.Tensor:
        # base64 data (API uploads, up to megabytes each) are kept under their digest, not as keys
        key = "sha256:" + hashlib.sha256(entry.encode()).hexdigest() if entry.startswith("base64:") else entry
        if key not in self._pixels:
            if len(self._pixels) >= self.max_entries:
                self._pixels.pop(next(iter(self._pixels)))
            image = load_image(entry, owner)
            self._pixels[key] = self.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
        return self._pixels[key]

    def pixel_values(self, entries, owner: str) -> torch.Tensor:
        """[len(entries), 3, H, W]; `owner` names the conversation in error messages."""
        if not entries:
            return self.empty
        return torch.stack([self.one(entry, owner) for entry in entries])

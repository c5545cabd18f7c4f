"""Replace each `<image>` token by that image's visual tokens, for a whole batch at once.

Output token types: 0 = padding, 1 = text, 2 = image (the reference's convention, which MMCA
reads). Image positions get label -100. Images are inserted in document order; the reference
inserts them reversed (its issue #800), which `image_order="reversed_legacy"` reproduces for
its released checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .mmca import IMAGE, PAD, TEXT  # noqa: F401 (the token types the splice writes and MMCA reads)
from .vocabulary import IGNORE_INDEX, round_up

IMAGE_ORDERS = ("forward", "reversed_legacy")


@dataclass
class SplicedBatch:
    embeds: torch.Tensor  # [batch, length, hidden]
    token_types: torch.Tensor  # [batch, length], PAD / TEXT / IMAGE: what MMCA reads, and > 0 is the attention mask
    labels: torch.Tensor | None  # [batch, length]
    position_ids: torch.Tensor  # [batch, length]


def image_permutation(images_per_sample: list[int], image_order: str, device) -> torch.Tensor:
    if image_order not in IMAGE_ORDERS:
        raise ValueError(f"model.image_order={image_order!r} is not one of {IMAGE_ORDERS}")
    ranges, start = [], 0
    for count in images_per_sample:
        block = torch.arange(start, start + count, device=device)
        ranges.append(block.flip(0) if image_order == "reversed_legacy" else block)
        start += count
    return torch.cat(ranges) if ranges else torch.zeros(0, dtype=torch.long, device=device)


def check_image_counts(placeholders: torch.Tensor, images_per_sample: list[int], num_images: int) -> None:
    """`placeholders`: the <image> tokens of each sample; each needs one image."""
    expected = torch.tensor(images_per_sample, device=placeholders.device, dtype=placeholders.dtype)
    if placeholders.shape != expected.shape or not torch.equal(placeholders, expected):
        raise ValueError(f"<image> tokens per sample {placeholders.tolist()} do not match image_num "
                         f"{list(images_per_sample)}; every <image> placeholder needs exactly one image")
    if num_images != sum(images_per_sample):
        raise ValueError(f"got {num_images} images but image_num sums to {sum(images_per_sample)}")


def landing_positions(valid: torch.Tensor, is_image: torch.Tensor, tokens_per_image: int, pad_to_multiple_of: int,
                      padding_side: str) -> tuple[torch.Tensor, int]:
    """Where each input token lands in the spliced sequence, and that sequence's length: a token's
    rank among valid tokens, shifted by the extra (tokens_per_image - 1) positions of every image
    before it (and by the row's padding when padding on the left)."""
    images_before = torch.cumsum(is_image.long(), dim=1) - is_image.long()
    rank = torch.cumsum(valid.long(), dim=1) - 1
    position = rank + (tokens_per_image - 1) * images_before
    lengths = valid.sum(dim=1) + (tokens_per_image - 1) * is_image.sum(dim=1)
    out_length = round_up(int(lengths.max().item()) if valid.shape[0] else 0, pad_to_multiple_of)
    if padding_side == "left":
        position = position + (out_length - lengths)[:, None]
    elif padding_side != "right":
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    return position, out_length


def splice_images(
    text_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_embeds: torch.Tensor,
    images_per_sample: list[int],
    image_token_id: int,
    pad_embedding: torch.Tensor,
    labels: torch.Tensor | None = None,
    image_order: str = "forward",
    pad_to_multiple_of: int = 1,
    padding_side: str = "right",
) -> SplicedBatch:
    batch, _, hidden = text_embeds.shape
    device = text_embeds.device
    tokens_per_image = image_embeds.shape[1] if image_embeds.dim() == 3 else 1
    valid = attention_mask > 0
    is_image = (input_ids == image_token_id) & valid
    check_image_counts(is_image.sum(dim=1), images_per_sample, image_embeds.shape[0])
    position, out_length = landing_positions(valid, is_image, tokens_per_image, pad_to_multiple_of, padding_side)

    embeds = pad_embedding.to(text_embeds.dtype).expand(batch, out_length, hidden).clone()
    token_types = torch.zeros(batch, out_length, dtype=torch.long, device=device)
    out_labels = None
    if labels is not None:
        out_labels = torch.full((batch, out_length), IGNORE_INDEX, dtype=labels.dtype, device=device)

    text_rows, text_cols = (valid & ~is_image).nonzero(as_tuple=True)
    text_targets = position[text_rows, text_cols]
    embeds[text_rows, text_targets] = text_embeds[text_rows, text_cols]
    token_types[text_rows, text_targets] = TEXT
    if labels is not None:
        out_labels[text_rows, text_targets] = labels[text_rows, text_cols]

    image_rows, image_cols = is_image.nonzero(as_tuple=True)  # row-major: document order
    if image_rows.numel():
        offsets = torch.arange(tokens_per_image, device=device)
        targets = position[image_rows, image_cols][:, None] + offsets  # [num_images, tokens]
        rows = image_rows[:, None].expand_as(targets)
        ordered = image_embeds[image_permutation(images_per_sample, image_order, device)]
        embeds[rows, targets] = ordered.to(embeds.dtype)
        token_types[rows, targets] = IMAGE

    position_ids = (torch.cumsum((token_types > 0).long(), dim=1) - 1).clamp(min=0)
    return SplicedBatch(embeds, token_types, out_labels, position_ids)

"""Model FLOPs of one training step: the one formula the training log (MFU), `plan` and the
benchmarks use.

    FLOPs = 6 x decoder body parameters x positions                (matmuls, forward + backward)
          + 6 x (vision + projection parameters) x image tokens     (the encoder's 2x forward
                                                                     counted as 6x, as nanoGPT /
                                                                     PaLM count every parameter)
          + 6 x vocab x hidden x supervised positions               (the LM head runs on those only)
          + 12 x layers x hidden x positions^2 / 2 x rows           (causal attention scores and
                                                                     values, half the square)

"decoder body" is the decoder without its embedding table and LM head. Counting the frozen
vision tower at 6x (it only runs forward) keeps the figure comparable with the published MFU
convention; it overstates the work of a frozen tower by 3x, which is small next to the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlopCounts:
    """Parameter counts and shape of the model, independent of the batch."""

    decoder_body_params: int
    vision_params: int
    projection_params: int
    vocab_size: int
    hidden_size: int
    num_layers: int


def step_flops(counts: FlopCounts, *, rows: int, length: int, image_tokens: int, supervised_tokens: int) -> float:
    """FLOPs of one optimizer micro-step over `rows` sequences of `length` positions, holding
    `image_tokens` image positions and `supervised_tokens` labelled positions in all."""
    body = 6 * counts.decoder_body_params * rows * length
    encoder = 6 * (counts.vision_params + counts.projection_params) * image_tokens
    head = 6 * counts.vocab_size * counts.hidden_size * supervised_tokens
    attention = 12 * counts.num_layers * counts.hidden_size * length**2 / 2 * rows
    return float(body + encoder + head + attention)


def flop_counts(model) -> FlopCounts:
    """The counts of a built DSVLModel (real or on the meta device)."""
    decoder = model.decoder
    body = sum(numel(p) for n, p in decoder.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    return FlopCounts(
        decoder_body_params=body,
        vision_params=sum(numel(p) for p in model.vision.parameters()),
        projection_params=sum(numel(p) for p in model.projection.parameters()),
        vocab_size=decoder.config.vocab_size,
        hidden_size=decoder.config.hidden_size,
        num_layers=decoder.config.num_hidden_layers,
    )


def numel(param) -> int:
    """Elements of the whole parameter, also when ZeRO-3 left this rank only a partition."""
    return getattr(param, "ds_numel", None) or param.numel()

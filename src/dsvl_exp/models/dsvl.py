"""DSVLModel: vision tower -> projection -> splice into text embeddings -> LLaMA decoder."""

from __future__ import annotations

import logging
import torch
import torch.nn.functional as F
from torch import nn

from dsvl_exp.constants import IGNORE_INDEX
from dsvl_exp.models.generation import decode
from dsvl_exp.models.decoder import uses_mmca
from dsvl_exp.models.mmca import TOKEN_TYPES_KWARG
from dsvl_exp.models.splice import SplicedBatch, splice_images

log = logging.getLogger(__name__)


class DSVLOutput(dict):
    """`loss` (token mean over supervised positions), `logits` [batch, length, vocab] and
    `num_supervised_tokens`.

    Training runs the LM head on the supervised positions only, so full-length logits are never
    built in a step; `logits` computes them from the kept hidden states on first access (in
    training mode only; in eval mode and without labels `forward` computes them). In the `small` preset the head over all 2,048 positions was 22 % of a step
    while ~128 positions carry labels (BENCHMARKS.md).

    A dict of its tensors (like transformers' ModelOutput): DeepSpeed's ZeRO-3 module hooks look
    for tensors in tensors, tuples, lists and dicts only, and warned "unknown inputs or outputs
    type" on every ZeRO-3 run for a plain object."""

    def __init__(self, loss, logits=None, num_supervised_tokens: int = 0, hidden_states=None, lm_head=None):
        super().__init__(loss=loss, num_supervised_tokens=num_supervised_tokens)
        if logits is not None:
            self["logits"] = logits
        self._hidden_states, self._lm_head = hidden_states, lm_head

    @property
    def loss(self):
        return self["loss"]

    @property
    def num_supervised_tokens(self) -> int:
        return self["num_supervised_tokens"]

    @property
    def logits(self) -> torch.Tensor:
        if "logits" not in self:
            self["logits"] = self._lm_head(self._hidden_states)
        return self["logits"]


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Token-mean cross-entropy over supervised positions (fp32) from full-length logits: the
    reference's computation, kept as the yardstick for `supervised_lm_loss`. No supervised token
    gives 0 (with a warning) rather than the reference's NaN."""
    shift_logits = logits[:, :-1]
    shift_labels = labels[:, 1:]
    supervised = shift_labels != IGNORE_INDEX
    count = int(supervised.sum().item())
    if count == 0:
        log.warning("batch has no supervised (answer) token; its loss is 0")
        return logits.sum() * 0.0, 0
    loss = F.cross_entropy(shift_logits[supervised].float(), shift_labels[supervised])
    return loss, count


def supervised_lm_loss(hidden_states: torch.Tensor, lm_head: nn.Module, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """`causal_lm_loss` without full-length logits: pick the positions whose next token has a
    label, then run the head and the cross-entropy on those rows only (equal to fp32 noise)."""
    batch, length, hidden = hidden_states.shape
    next_labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)  # position t predicts t + 1
    rows = (next_labels != IGNORE_INDEX).nonzero().squeeze(1)
    count = int(rows.numel())
    if count == 0:
        log.warning("batch has no supervised (answer) token; its loss is 0")
        return hidden_states.sum() * 0.0, 0
    logits = lm_head(hidden_states.reshape(batch * length, hidden).index_select(0, rows))
    return F.cross_entropy(logits.float(), next_labels.index_select(0, rows)), count


class DSVLModel(nn.Module):
    """The composed model.

    The decoder's own input-embedding table is the trainable "language embedding" the
    reference keeps as a separate copy (`lang_embed`): with one table, tokens produced by
    `generate` are embedded with the same weights that training updated.
    """

    def __init__(
        self,
        vision: nn.Module,
        projection: nn.Module,
        decoder: nn.Module,
        image_token_id: int,
        pad_token_id: int,
        eos_token_id: int,
        image_order: str = "forward",
        pad_to_multiple_of: int = 8,
    ):
        super().__init__()
        self.vision = vision
        self.projection = projection
        self.decoder = decoder
        self.image_token_id = image_token_id
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.image_order = image_order
        self.pad_to_multiple_of = pad_to_multiple_of

    # ---- save / load (models/pretrained.py) ----------------------------------------------------
    @property
    def config(self):
        """The DSVLConfig describing this model (what config.json holds)."""
        from dsvl_exp.models.build import model_config

        return model_config(self)

    def save_pretrained(self, out_dir, *, tokenizer=None, state_dict=None, keep_adapters: bool = False,
                        training_summary: dict | None = None, max_shard_size="5GB"):
        """A self-contained folder that `DSVLModel.from_pretrained` loads offline (see models/pretrained.py)."""
        from dsvl_exp.models.pretrained import save_pretrained

        return save_pretrained(self, out_dir, state_dict=state_dict, tokenizer=tokenizer, keep_adapters=keep_adapters,
                               training_summary=training_summary, max_shard_size=max_shard_size)

    @classmethod
    def from_pretrained(cls, path, dtype=None) -> "DSVLModel":
        """Rebuild a saved/exported model; `model.vision.image_processor` prepares its images and
        `dsvl_exp.models.tokenizer.load_tokenizer(path)` loads its tokenizer."""
        from dsvl_exp.models.pretrained import from_pretrained

        return from_pretrained(path, dtype=dtype)

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.decoder.get_input_embeddings()

    @property
    def uses_mmca(self) -> bool:
        return uses_mmca(self.decoder)

    def mask_kwargs(self, token_types: torch.Tensor) -> dict:
        """The decoder's mask argument for 0/1/2 token types: MMCA reads the types themselves."""
        if self.uses_mmca:
            return {TOKEN_TYPES_KWARG: token_types}
        return {"attention_mask": (token_types > 0).long()}

    @property
    def tokens_per_image(self) -> int:
        return self.projection.output_tokens(self.vision.num_tokens)

    def gradient_checkpointing_enable(self) -> None:
        self.vision.gradient_checkpointing_enable()
        # non-reentrant: correct when the decoder is frozen and only its inputs carry grad
        self.decoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[num_images, 3, H, W] -> [num_images, tokens_per_image, decoder hidden]."""
        hidden = self.embed_tokens.embedding_dim
        if images.shape[0] == 0:
            return torch.zeros(0, self.tokens_per_image, hidden, dtype=self.embed_tokens.weight.dtype, device=images.device)
        vision_trains = any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and vision_trains):
            features = self.vision(images)
        return self.projection(features.to(next(self.projection.parameters()).dtype))

    def splice(self, images, input_ids, attention_mask, image_num, labels=None, padding_side="right", pad_to_multiple_of=None) -> SplicedBatch:
        text_embeds = self.embed_tokens(input_ids)
        # through the module, not `.weight[...]`: under ZeRO-3 the weight is gathered only
        # inside the embedding's own forward (generate runs outside the engine's hooks too)
        pad_ids = torch.tensor([self.pad_token_id], device=input_ids.device)
        pad_embedding = self.embed_tokens(pad_ids)[0].detach()
        return splice_images(
            text_embeds=text_embeds,
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_embeds=self.encode_images(images),
            image_num=list(image_num),
            image_token_id=self.image_token_id,
            pad_embedding=pad_embedding,
            labels=labels,
            image_order=self.image_order,
            pad_to_multiple_of=self.pad_to_multiple_of if pad_to_multiple_of is None else pad_to_multiple_of,
            padding_side=padding_side,
        )

    def forward(self, images, input_ids, attention_mask, labels=None, image_num=None) -> DSVLOutput:
        """Reference I/O: images [total_images, 3, H, W], image_num a per-sample list."""
        if image_num is None:
            image_num = [int(images.shape[0])] if input_ids.shape[0] == 1 else None
            if image_num is None:
                raise ValueError("image_num (images per sample) is required for a batch of more than one sample")
        spliced = self.splice(images, input_ids, attention_mask, image_num, labels=labels)
        # the decoder body, then the head only where it is needed (see DSVLOutput)
        hidden_states = self.decoder.get_decoder()(
            inputs_embeds=spliced.embeds,
            position_ids=spliced.position_ids,
            use_cache=False,
            **self.mask_kwargs(spliced.attention_mask),
        ).last_hidden_state
        lm_head = self.decoder.get_output_embeddings()
        if labels is None:
            return DSVLOutput(loss=None, logits=lm_head(hidden_states))
        loss, count = supervised_lm_loss(hidden_states, lm_head, spliced.labels)
        if self.training:  # lazy: a training step never needs them
            return DSVLOutput(loss=loss, num_supervised_tokens=count, hidden_states=hidden_states, lm_head=lm_head)
        # Outside training the head runs here, inside forward: under ZeRO-3 its weight is gathered
        # only within the engine's forward, by every rank together (a later call on one rank hangs).
        return DSVLOutput(loss=loss, logits=lm_head(hidden_states), num_supervised_tokens=count)

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_num: list[int],
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        synced_gpus: bool = False,
        streamer=None,
    ) -> list[list[int]]:
        """Continue a left-padded batch of prompts; returns the new token ids of each, cut at EOS.

        `synced_gpus`: keep stepping until every rank is done (ZeRO-3 gathers collectively)."""
        spliced = self.splice(images, input_ids, attention_mask, image_num, padding_side="left", pad_to_multiple_of=1)
        return decode(
            self.decoder,
            spliced.embeds,
            spliced.attention_mask,
            spliced.position_ids,
            self.mask_kwargs,
            eos_token_id=self.eos_token_id,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            synced_gpus=synced_gpus,
            streamer=streamer,
        )

"""DSVLForConditionalGeneration (alias DSVLModel): vision tower -> projection -> image features
in the text embeddings -> LLaMA decoder, as a transformers `PreTrainedModel` + `GenerationMixin`.

Two input contracts, one model:
- the reference's (training, `images` + `image_num`): one `<image>` token per image, which
  `splice_images` widens to the image's visual tokens (models/splice.py);
- transformers' (`pixel_values`, what `DSVLProcessor` returns): the processor has already expanded
  every `<image>` to `tokens_per_image` image tokens, and the features are written into those
  positions with `masked_scatter`, as transformers' LLaVA does. MMCA's token types come from the
  ids (`mm_token_type_ids`, 1 at image tokens), which `generate` extends with text (0) for every new
  token, so they follow the KV cache.

This file and the ones it imports relatively travel into every export folder (transformers'
`trust_remote_code`): they import torch and transformers only, never the rest of dsvl_exp."""

from __future__ import annotations

import importlib
import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .build import build_parts, config_from_parts
from .config import DSVLConfig
from .decoder import uses_mmca
from .mmca import TOKEN_TYPES_KWARG
from .splice import IMAGE, PAD, TEXT, SplicedBatch, image_permutation, splice_images
from .vocabulary import IGNORE_INDEX

log = logging.getLogger(__name__)
_INSIDE_DSVL_EXP = __name__.startswith("dsvl_exp.")


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


class DSVLForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """The composed model, built from its `DSVLConfig` (`DSVLForConditionalGeneration(config)`) or
    from parts already built (`DSVLModel(vision, projection, decoder, image_token_id, pad_token_id,
    eos_token_id, image_order=..., pad_to_multiple_of=...)`, what training does with pretrained
    parts). Building from parts initialises nothing: the parts keep their weights (and the RNG its state).

    The decoder's own input-embedding table is the trainable "language embedding" the
    reference keeps as a separate copy (`lang_embed`): with one table, tokens produced by
    `generate` are embedded with the same weights that training updated.
    """

    config_class = DSVLConfig
    base_model_prefix = "dsvl"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer"]

    def __init__(self, config=None, *parts, image_processor=None, **glue):
        if config is None or isinstance(config, nn.Module):  # the parts-first form
            names = ("vision", "projection", "decoder", "image_token_id", "pad_token_id", "eos_token_id")
            glue.update(zip(names, (config, *parts) if config is not None else parts))
            vision, projection, decoder = (glue.pop(name) for name in names[:3])
            config = config_from_parts(vision, projection, decoder, **glue)
            built_here = False
        else:
            vision, projection, decoder = build_parts(config, image_processor)
            built_here = True
        super().__init__(config)
        self.vision = vision
        self.projection = projection
        self.decoder = decoder
        self.image_token_id = config.image_token_id
        self.pad_token_id = config.pad_token_id
        self.eos_token_id = config.eos_token_id
        self.image_order = config.image_order
        self.pad_to_multiple_of = config.pad_to_multiple_of
        if config.tokens_per_image is not None and self.tokens_per_image != config.tokens_per_image:
            raise ValueError(f"config.json says {config.tokens_per_image} visual tokens per image; the described "
                             f"architecture gives {self.tokens_per_image}")
        self._parts_given = not built_here
        self.post_init()

    def init_weights(self):
        # Parts given already hold their weights: transformers' init pass would re-draw those of
        # the parts that are not transformers models (projection, Qwen tower) and move the RNG.
        if self._parts_given:
            self.tie_weights(recompute_mapping=False)
            return
        super().init_weights()

    def _init_weights(self, module):
        """Nothing to do: every part initialises itself when built (the HF parts by their own
        `_init_weights`, the projection and the Qwen tower in their constructors)."""

    # ---- save / load -----------------------------------------------------------------------------
    # Inside dsvl_exp (not the copy of this file that travels in an export folder) the project's
    # folder format is used: strict weight loading, kept peft adapters, format-1 folders, tokenizer,
    # processor and model card (models/pretrained.py, which imports peft: looked up by name so
    # that transformers' import check of the travelling copy does not ask for dsvl_exp).
    def save_pretrained(self, save_directory, *args, **kwargs):
        if not _INSIDE_DSVL_EXP:
            return super().save_pretrained(save_directory, *args, **kwargs)
        return importlib.import_module("dsvl_exp.models.pretrained").save_pretrained(self, save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if not _INSIDE_DSVL_EXP:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        return importlib.import_module("dsvl_exp.models.pretrained").from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # ---- the parts -------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Embedding:
        return self.decoder.get_input_embeddings()

    def set_input_embeddings(self, value) -> None:
        self.decoder.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.decoder.get_output_embeddings()

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

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
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

    # ---- the reference's contract: one <image> token per image -----------------------------------
    def splice(self, images, input_ids, attention_mask, images_per_sample, labels=None, padding_side="right",
               pad_to_multiple_of=None) -> SplicedBatch:
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
            images_per_sample=list(images_per_sample),
            image_token_id=self.image_token_id,
            pad_embedding=pad_embedding,
            labels=labels,
            image_order=self.image_order,
            pad_to_multiple_of=self.pad_to_multiple_of if pad_to_multiple_of is None else pad_to_multiple_of,
            padding_side=padding_side,
        )

    def forward(self, images=None, input_ids=None, attention_mask=None, labels=None, image_num=None, *,
                pixel_values=None, mm_token_type_ids=None, position_ids=None, cache=None, use_cache=None,
                logits_to_keep=0, **kwargs):
        """`images` [total_images, 3, H, W] with `image_num` (a per-sample list): the reference's I/O,
        one `<image>` per image. `pixel_values`: transformers' I/O (placeholders already expanded)."""
        if images is not None or image_num is not None:
            return self._reference_forward(images, input_ids, attention_mask, labels, image_num)
        return self._expanded_forward(input_ids, attention_mask, labels, pixel_values, mm_token_type_ids,
                                      position_ids, cache, use_cache, logits_to_keep)

    def _reference_forward(self, images, input_ids, attention_mask, labels, images_per_sample) -> DSVLOutput:
        if images_per_sample is None:
            if input_ids.shape[0] != 1:
                raise ValueError("image_num (images per sample) is required for a batch of more than one sample")
            images_per_sample = [int(images.shape[0])]
        spliced = self.splice(images, input_ids, attention_mask, images_per_sample, labels=labels)
        # the decoder body, then the head only where it is needed (see DSVLOutput)
        hidden_states = self.decoder.get_decoder()(
            inputs_embeds=spliced.embeds,
            position_ids=spliced.position_ids,
            use_cache=False,
            **self.mask_kwargs(spliced.token_types),
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

    # ---- transformers' contract: placeholders expanded by the processor --------------------------
    def _expanded_forward(self, input_ids, attention_mask, labels, pixel_values, mm_token_type_ids, position_ids,
                          cache, use_cache, logits_to_keep) -> CausalLMOutputWithPast:
        is_image = input_ids == self.image_token_id
        embeds = self.embed_tokens(input_ids)
        if pixel_values is not None and (cache is None or cache.get_seq_length() == 0):
            embeds = self.place_image_features(embeds, is_image, pixel_values)
        if attention_mask is None:  # every position, cached ones included, is real
            past = cache.get_seq_length() if cache is not None else 0
            attention_mask = torch.ones(input_ids.shape[0], past + input_ids.shape[1], dtype=torch.long, device=input_ids.device)
        if mm_token_type_ids is None:  # no cache to follow: the ids say where the images are
            mm_token_type_ids = is_image.long()
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        if self.uses_mmca:  # the types of every key, cached positions included
            types = torch.where(attention_mask.bool(), torch.where(mm_token_type_ids.bool(), IMAGE, TEXT), PAD)
            mask = {TOKEN_TYPES_KWARG: types}
        else:
            mask = {"attention_mask": attention_mask}
        outputs = self.decoder.get_decoder()(inputs_embeds=embeds, position_ids=position_ids, cache=cache,
                                             use_cache=use_cache, **mask)
        hidden_states = outputs.last_hidden_state
        lm_head = self.decoder.get_output_embeddings()
        loss = None
        if labels is not None:
            loss, _ = supervised_lm_loss(hidden_states, lm_head, labels.masked_fill(is_image, IGNORE_INDEX))
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return CausalLMOutputWithPast(loss=loss, logits=lm_head(hidden_states[:, keep]), cache=outputs.cache)

    def place_image_features(self, embeds: torch.Tensor, is_image: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Write each image's visual tokens into its run of image tokens (document order, or
        each sample's images reversed under `image_order=reversed_legacy`)."""
        features = self.encode_images(pixel_values.to(self.embed_tokens.weight.device))
        tokens = features.shape[0] * self.tokens_per_image
        if int(is_image.sum()) != tokens:
            raise ValueError(f"the ids hold {int(is_image.sum())} image tokens but {features.shape[0]} image(s) need "
                             f"{tokens} ({self.tokens_per_image} each): expand every <image> with DSVLProcessor")
        images_per_sample = (is_image.sum(dim=1) // self.tokens_per_image).tolist()
        features = features[image_permutation(images_per_sample, self.image_order, features.device)]
        return embeds.masked_scatter(is_image[..., None], features.reshape(-1, features.shape[-1]).to(embeds.dtype))

    def prepare_inputs_for_generation(self, input_ids, *args, mm_token_type_ids=None, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        # MMCA needs the types of all keys, not of this step's tokens only (what the base slices to)
        if mm_token_type_ids is not None:
            inputs["mm_token_type_ids"] = mm_token_type_ids
        return inputs

    def expand_image_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference ids (one `<image>` per image) -> transformers' ids (`tokens_per_image` each),
        left-padded with `pad_token_id`."""
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            kept = [token for token, keep in zip(ids, mask) if keep]
            rows.append([t for token in kept for t in ([token] * self.tokens_per_image if token == self.image_token_id else [token])])
        length = max(len(row) for row in rows)
        expanded = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        expanded_mask = torch.zeros_like(expanded)
        for index, row in enumerate(rows):
            expanded[index, length - len(row):] = torch.tensor(row, dtype=torch.long)
            expanded_mask[index, length - len(row):] = 1
        return expanded.to(input_ids.device), expanded_mask.to(input_ids.device)

    @torch.no_grad()
    def generate(self, *args, **kwargs):
        """transformers' `generate` (greedy, sampling, beam search, stop strings, streamers, ...).

        Given the reference's inputs (`generate(images, input_ids, attention_mask, image_num, ...)`,
        one `<image>` per image) it expands them first and returns each row's new token ids cut at
        EOS (a list of lists), as `DSVLModel.generate` always did; a streamer then receives the new
        tokens only."""
        if args and torch.is_tensor(args[0]) and args[0].is_floating_point() and args[0].dim() == 4:
            names = ("images", "input_ids", "attention_mask", "image_num")
            kwargs.update(zip(names, args))
            args = ()
        if "images" in kwargs or "image_num" in kwargs:
            return self._generate_from_reference_inputs(**kwargs)
        input_ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
        if input_ids is not None and "mm_token_type_ids" not in kwargs:
            kwargs["mm_token_type_ids"] = (input_ids == self.image_token_id).long()  # new tokens join as text
        return super().generate(*args, **kwargs)

    def _generate_from_reference_inputs(self, input_ids, images=None, attention_mask=None, image_num=None,
                                        max_new_tokens: int = 32, streamer=None, **kwargs) -> list[list[int]]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        counts = (input_ids == self.image_token_id).logical_and(attention_mask.bool()).sum(dim=1).tolist()
        if image_num is not None and counts != list(image_num):
            raise ValueError(f"<image> tokens per sample {counts} do not match image_num {list(image_num)}; "
                             "every <image> placeholder needs exactly one image")
        expanded, expanded_mask = self.expand_image_tokens(input_ids, attention_mask)
        eos = self.eos_token_id
        kwargs.setdefault("top_k", None)  # sampling is temperature and top-p only unless asked
        if not kwargs.get("do_sample", False):  # ignored when greedy, as they always were (no warning)
            for name in ("temperature", "top_p", "top_k"):
                kwargs.pop(name, None)
        output = self.generate(
            input_ids=expanded, attention_mask=expanded_mask,
            pixel_values=images if images is not None and images.shape[0] else None,
            max_new_tokens=max_new_tokens, eos_token_id=eos if eos is not None and eos >= 0 else None,
            pad_token_id=self.pad_token_id, streamer=_NewTokensOnly(streamer) if streamer is not None else None,
            **kwargs,
        )
        results = []
        for row in output[:, expanded.shape[1]:].tolist():
            results.append(row[: row.index(eos)] if eos in row else row)
        return results


class _NewTokensOnly:
    """A streamer that skips the prompt `generate` sends first (the reference-input path's streamers
    have always received new tokens only)."""

    def __init__(self, streamer):
        self.streamer, self.prompt_seen = streamer, False

    def put(self, value):
        if self.prompt_seen:
            self.streamer.put(value)
        self.prompt_seen = True

    def end(self):
        self.streamer.end()


DSVLModel = DSVLForConditionalGeneration  # the name the project, its README and users call it by

"""DSVLProcessor: image processor + tokenizer + the DSVL chat template, as transformers' processors.

`processor.apply_chat_template(messages, add_generation_prompt=True)` renders the training
template (data/template.py): one BOS per round, the system prompt on the first round, every
image of a round as `### Image N:` + `<image>` numbered on across rounds, then
`### Question:` / `### Answer:`; an answer ends with EOS. `processor(text=..., images=...)` expands
every `<image>` to `tokens_per_image` image tokens (the model writes the visual features there),
left-pads, and returns what `model.generate` takes. Travels into export folders with the model."""

from __future__ import annotations

from transformers import BatchFeature, ProcessorMixin

from .vocabulary import DEFAULT_SYSTEM_PROMPT, IMAGE_TOKEN


def _escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


# Messages: {"role": "system" | "user" | "assistant", "content": str or [{"type": "image"},
# {"type": "text", "text": ...}, ...]}. Images of a user message come before its question,
# whatever their place in the content list (the DSVL layout).
CHAT_TEMPLATE = (
    "{%- set ns = namespace(image=1, first=true) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system = '" + _escaped(DEFAULT_SYSTEM_PROMPT) + "' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set text = message['content'] -%}{%- set parts = [] -%}"
    "{%- else -%}"
    "{%- set parts = message['content'] -%}"
    "{%- set text = parts | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ bos_token }}{%- if ns.first -%}{{ system }}{%- set ns.first = false -%}{%- endif -%}"
    "{%- set images = parts | selectattr('type', 'equalto', 'image') | list -%}"
    "{%- for image in images -%}"
    "{{ '### Image ' ~ ns.image ~ ':\\n" + IMAGE_TOKEN + "\\n' }}{%- set ns.image = ns.image + 1 -%}"
    "{%- endfor -%}"
    "{%- if images -%}{{ '\\n' }}{%- endif -%}"
    "{{ '### Question:\\n' ~ text ~ '\\n\\n### Answer:\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ text ~ eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


class DSVLProcessor(ProcessorMixin):
    def __init__(self, image_processor=None, tokenizer=None, tokens_per_image: int = 1, chat_template=None,
                 image_token: str = IMAGE_TOKEN, **kwargs):
        self.tokens_per_image = tokens_per_image
        self.image_token = image_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE, **kwargs)

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    def __call__(self, images=None, text=None, return_tensors="pt", **kwargs) -> BatchFeature:
        """`text`: one prompt or a list (each `<image>` marks one image, in order); `images`: the
        images of all prompts in order (a flat list, or one list per prompt)."""
        texts = [text] if isinstance(text, str) else list(text or [])
        flat = _flatten(images)
        placeholders = sum(t.count(self.image_token) for t in texts)
        if placeholders != len(flat):
            raise ValueError(f"the text holds {placeholders} {self.image_token} placeholder(s) for {len(flat)} image(s)")
        expanded = [t.replace(self.image_token, self.image_token * self.tokens_per_image) for t in texts]
        kwargs.pop("add_special_tokens", None)  # the chat template writes BOS and EOS itself
        self.tokenizer.padding_side = "left"
        encoded = self.tokenizer(expanded, add_special_tokens=False, padding=True, return_tensors=return_tensors,
                                 **{k: v for k, v in kwargs.items() if k in ("truncation", "max_length")})
        data = dict(encoded)
        data["mm_token_type_ids"] = (encoded["input_ids"] == self.image_token_id).long()
        if flat:
            data["pixel_values"] = self.image_processor(flat, return_tensors="pt")["pixel_values"]
        return BatchFeature(data=data, tensor_type=None)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "mm_token_type_ids", "pixel_values"]


def _flatten(images) -> list:
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        return [images]
    flat = []
    for item in images:
        flat.extend(_flatten(item) if isinstance(item, (list, tuple)) else [item])
    return flat


__all__ = ["DSVLProcessor", "CHAT_TEMPLATE"]

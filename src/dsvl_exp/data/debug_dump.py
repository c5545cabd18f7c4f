"""`data.debug_dump=N`: the first N training samples as the model sees them, for inspection.

Writes `debug_samples/sample{k}.txt` (the rendered text of every round, prompt and answer) and
`debug_samples/sample{k}_image{i}.png` (each image as loaded, before preprocessing).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dsvl_exp.data.conversation import Conversation
from dsvl_exp.data.images import load_image
from dsvl_exp.data.template import ChatTemplate


def render_text(conversation: Conversation, template: ChatTemplate, eos_token: str) -> str:
    return "".join(prompt + answer + eos_token for prompt, answer in template.render_conversation(conversation))


def dump_samples(conversations: Sequence[Conversation], template: ChatTemplate, eos_token: str, count: int, out_dir: Path) -> Path:
    folder = Path(out_dir) / "debug_samples"
    folder.mkdir(parents=True, exist_ok=True)
    for k, conversation in enumerate(conversations[:count]):
        header = f"# id: {conversation.id}\n# source: {conversation.source}\n# images: {len(conversation.images)}\n\n"
        (folder / f"sample{k}.txt").write_text(header + render_text(conversation, template, eos_token), encoding="utf-8")
        for i, entry in enumerate(conversation.images):
            load_image(entry, conversation.id).save(folder / f"sample{k}_image{i + 1}.png")
    return folder

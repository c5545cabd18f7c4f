"""`sparkles_dialogue`: SparklesDialogueCC and SparklesDialogueVG, native multi-image dialogues.

Layout: SparklesDialogue{CC,VG}/images/{image_id}.jpg and
SparklesDialogue{CC,VG}/annotations/SparklesDialogue{CC,VG}.json, a list of
{"dialogue": [{"role": "user"|"assistant", "content": ..., "images": [{"image_id": ...}]}]}.
Questions refer to images as `IMAGE#{id}`.

One-time filtering into SparklesDialogue.json at the data root keeps dialogues with an even
number of turns, alternating user/assistant, every image file present and at most
`max_images_per_sample` images (the reference hard-codes 8).

Per dialogue one tag style is drawn ("image a", "image A" or "the first image"), every
`IMAGE#{id}` becomes that tag in order of first appearance, and sentence starts are
re-capitalised. A user turn shows its own images.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from dsvl_exp.data.cache import cached_json
from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.formats.common import field, load_annotations, nonempty_answer, require_dir, require_file
from dsvl_exp.data.formats.registry import LoadedDataset, register

SPARKLES_URL = "https://github.com/HYPJUDY/Sparkles"
SUBSETS = ("SparklesDialogueCC", "SparklesDialogueVG")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
TAG_STYLES = (
    tuple(f"image {c}" for c in "abcdefgh"),
    tuple(f"image {c}" for c in "ABCDEFGH"),
    tuple(f"the {o} image" for o in ORDINALS),
)
SENTENCE_START = re.compile(r"((?<=[\.\?!]\s)(\w+)|(^\w+))")


def keep_dialogue(record: dict, image_dir: Path, max_images: int) -> bool:
    turns = record.get("dialogue", [])
    if len(turns) % 2 != 0:
        return False
    if any(turn.get("role") != ("user" if k % 2 == 0 else "assistant") for k, turn in enumerate(turns)):
        return False
    image_ids = [image["image_id"] for turn in turns for image in turn.get("images", [])]
    return len(image_ids) <= max_images and all((image_dir / f"{i}.jpg").is_file() for i in image_ids)


def filter_dialogues(root: Path, max_images: int) -> list[dict]:
    kept = []
    for subset in SUBSETS:
        path = root / subset / "annotations" / f"{subset}.json"
        for record in load_annotations(path, "sparkles_dialogue"):
            if keep_dialogue(record, root / subset / "images", max_images):
                kept.append({**record, "image_path": f"{subset}/images"})
    return kept


def dialogue_conversation(record: dict, root: Path, rng: random.Random, where: str) -> Conversation:
    tags = rng.choice(TAG_STYLES)
    image_dir = root / record["image_path"]
    names: list[tuple[str, str]] = []  # (IMAGE#id, tag) in order of first appearance
    images: list[str] = []
    rounds: list[Round] = []
    turns = field(record, "dialogue", where)
    for k in range(len(turns) // 2):
        user, assistant = turns[2 * k], turns[2 * k + 1]
        shown = [image["image_id"] for image in user.get("images", [])]
        for image_id in shown:
            names.append((f"IMAGE#{image_id}", tags[len(names)]))
            images.append(str(image_dir / f"{image_id}.jpg"))
        question = user["content"].replace("<Img><ImageHere></Img>", "").replace("\n", "")
        answer = nonempty_answer(assistant.get("content"), f"{where}.dialogue[{2 * k + 1}]")
        # Through placeholders, so a tag never gets rewritten by a later replacement.
        for n, (name, _) in enumerate(names):
            question, answer = question.replace(name, f"%temp{n}%"), answer.replace(name, f"%temp{n}%")
        for n, (_, tag) in enumerate(names):
            question, answer = question.replace(f"%temp{n}%", tag), answer.replace(f"%temp{n}%", tag)
        capitalise = lambda match: match.group().capitalize()  # noqa: E731
        rounds.append(Round(SENTENCE_START.sub(capitalise, question), SENTENCE_START.sub(capitalise, answer), len(shown)))
    return Conversation(id=f"sparkles_dialogue:{record.get('dialogue_id', where)}", images=tuple(images), rounds=tuple(rounds), source=where)


@register("sparkles_dialogue")
def read_sparkles(root: Path, rng: random.Random, max_images: int, image_dir: Path | None) -> LoadedDataset:
    raw_paths = []
    for subset in SUBSETS:
        require_dir(root / subset / "images", "sparkles_dialogue", SPARKLES_URL)
        raw_paths.append(require_file(root / subset / "annotations" / f"{subset}.json", "sparkles_dialogue", SPARKLES_URL))
    # The reference's file name holds its fixed limit of 8; other limits get their own cache.
    filtered_path = root / ("SparklesDialogue.json" if max_images == 8 else f"SparklesDialogue_filtered{max_images}.json")
    records = cached_json(filtered_path, lambda: filter_dialogues(root, max_images), "sparkles_dialogue")
    conversations = [dialogue_conversation(r, root, rng, f"{filtered_path}[{i}]") for i, r in enumerate(records)]
    return LoadedDataset(conversations, tuple(raw_paths))

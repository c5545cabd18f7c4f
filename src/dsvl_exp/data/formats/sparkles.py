"""`sparkles_dialogue`: SparklesDialogueCC and SparklesDialogueVG, native multi-image dialogues.

Layout: SparklesDialogue{CC,VG}/images/{image_id}.jpg and
SparklesDialogue{CC,VG}/annotations/SparklesDialogue{CC,VG}.json, a list of
{"dialogue": [{"role": "user"|"assistant", "content": ..., "images": [{"image_id": ...}]}]}.
Questions refer to images as `IMAGE#{id}`.

One-time checking into SparklesDialogue.json at the data root: a dialogue with an odd number of
turns or turns not alternating user/assistant is an error naming the raw file, the dialogue's
index and the problem; one with more than `max_images_per_sample` images is dropped, counted
and logged (the reference's rule, which hard-codes 8). A missing image file follows
`data.on_missing_image` like every other reader's.

Per dialogue one tag style is drawn ("image a", "image A" or "the first image"), every
`IMAGE#{id}` becomes that tag in order of first appearance (the whole id is matched, so
`IMAGE#14` never matches inside `IMAGE#1417`), and sentence starts are re-capitalised. A user
turn shows its own images.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

from dsvl_exp.data.cache import cached_json_with_notes
from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.formats.common import field, load_annotations, nonempty_answer, require_dir, require_file
from dsvl_exp.data.formats.registry import LoadedDataset, drawn, register

log = logging.getLogger(__name__)
SPARKLES_URL = "https://github.com/HYPJUDY/Sparkles"
SUBSETS = ("SparklesDialogueCC", "SparklesDialogueVG")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
TAG_STYLES = (
    tuple(f"image {c}" for c in "abcdefgh"),
    tuple(f"image {c}" for c in "ABCDEFGH"),
    tuple(f"the {o} image" for o in ORDINALS),
)
SENTENCE_START = re.compile(r"((?<=[\.\?!]\s)(\w+)|(^\w+))")
IMAGE_NAME = re.compile(r"IMAGE#(\w+)")  # greedy: the whole id, never a prefix of a longer one


def dialogue_image_ids(record: dict, where: str) -> list:
    """The dialogue's image ids; raises naming `where` when its turns are malformed."""
    turns = field(record, "dialogue", where)
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: 'dialogue' must be a non-empty list of user/assistant turns")
    if len(turns) % 2:
        raise DataError(f"{where}: odd number of turns ({len(turns)}); every user turn needs an assistant answer")
    for k, turn in enumerate(turns):
        expected = "user" if k % 2 == 0 else "assistant"
        if not isinstance(turn, dict) or turn.get("role") != expected:
            got = turn.get("role") if isinstance(turn, dict) else type(turn).__name__
            raise DataError(f"{where}: turn {k} has role {got!r}, expected {expected!r}; turns must alternate user, assistant")
    return [field(image, "image_id", f"{where}.dialogue[{k}].images") for k, turn in enumerate(turns) for image in turn.get("images", [])]


def check_dialogues(root: Path, max_images: int) -> tuple[list[dict], dict]:
    kept, over_limit = [], 0
    for subset in SUBSETS:
        path = root / subset / "annotations" / f"{subset}.json"
        for index, record in enumerate(load_annotations(path, "sparkles_dialogue")):
            where = f"{path} [dialogue {index}]"
            if len(dialogue_image_ids(record, where)) > max_images:
                over_limit += 1
                continue
            kept.append({**record, "image_path": f"{subset}/images", "raw_file": str(path), "raw_index": index,
                         "subset": subset})
    return kept, {"over_image_limit": over_limit} if over_limit else {}


def replace_names(text: str, tag_of: dict[str, str]) -> str:
    return IMAGE_NAME.sub(lambda match: tag_of.get(match.group(1), match.group(0)), text)


def dialogue_conversation(record: dict, root: Path, rng: random.Random, where: str) -> Conversation:
    tags = rng.choice(TAG_STYLES)
    image_dir = root / record["image_path"]
    tag_of: dict[str, str] = {}  # image id -> tag, in order of first appearance
    images: list[str] = []
    rounds: list[Round] = []
    turns = field(record, "dialogue", where)
    for k in range(len(turns) // 2):
        user, assistant = turns[2 * k], turns[2 * k + 1]
        shown = [image["image_id"] for image in user.get("images", [])]
        for image_id in shown:
            n = len(tag_of)  # past the 8 styled tags (a limit above the reference's 8): numbered
            tag_of.setdefault(str(image_id), tags[n] if n < len(tags) else f"image {n + 1}")
            images.append(str(image_dir / f"{image_id}.jpg"))
        question = replace_names(user["content"].replace("<Img><ImageHere></Img>", "").replace("\n", ""), tag_of)
        answer = replace_names(nonempty_answer(assistant.get("content"), f"{where}.dialogue[{2 * k + 1}]"), tag_of)
        capitalise = lambda match: match.group().capitalize()  # noqa: E731
        rounds.append(Round(SENTENCE_START.sub(capitalise, question), SENTENCE_START.sub(capitalise, answer), len(shown)))
    conv_id = record.get("dialogue_id", f"{record['subset']}:{record['raw_index']}")
    return Conversation(id=f"sparkles_dialogue:{conv_id}", images=tuple(images), rounds=tuple(rounds), source=where)


@register("sparkles_dialogue")
def read_sparkles(root: Path, rng: random.Random, max_images: int, image_dir: Path | None) -> LoadedDataset:
    raw_paths = []
    for subset in SUBSETS:
        require_dir(root / subset / "images", "sparkles_dialogue", SPARKLES_URL)
        raw_paths.append(require_file(root / subset / "annotations" / f"{subset}.json", "sparkles_dialogue", SPARKLES_URL))
    # The reference's file name holds its fixed limit of 8; other limits get their own cache.
    checked_path = root / ("SparklesDialogue.json" if max_images == 8 else f"SparklesDialogue_filtered{max_images}.json")
    records, dropped = cached_json_with_notes(checked_path, lambda: check_dialogues(root, max_images), "sparkles_dialogue",
                                              sources=raw_paths)
    if dropped:
        log.warning("sparkles_dialogue (%s): dropped %d dialogue(s) with more than %d images (the reference's rule)",
                    root, dropped["over_image_limit"], max_images)
    places = [f"{r['raw_file']} [dialogue {r['raw_index']}]" for r in records]
    return drawn(lambda rng: [dialogue_conversation(r, root, rng, where) for r, where in zip(records, places)], rng, raw_paths, dropped)

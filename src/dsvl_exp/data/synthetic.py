"""A small, learnable, multi-image multi-round data set: coloured shapes.

Each conversation shows 1-3 images, each with one shape of one colour, spread over 1-3
rounds, and asks about them by their running number ("What colour is the shape in image 2?",
"How many images show a circle?"). Answers are single words, so answer accuracy is exact
match. Chance level is about 1/6 for colours, 1/3 for shapes and about 1/3 for counts.

The set is written in the project's native JSONL format plus PNG files, so training reads it
through the same code path as user data.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from PIL import Image, ImageDraw

from dsvl_exp.files import publish_folder

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
FORMAT_VERSION = "shapes-v1"


def draw_shape(shape: str, colour: str, size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    extent = rng.uniform(0.55, 0.8) * size
    left = rng.uniform(0, size - extent)
    top = rng.uniform(0, size - extent)
    box = (left, top, left + extent, top + extent)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(left, top + extent), (left + extent, top + extent), (left + extent / 2, top)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    return image


def _question(rng: random.Random, shown: list[tuple[str, str]]) -> tuple[str, str]:
    kind = rng.choice(("colour", "shape", "count") if len(shown) > 1 else ("colour", "shape"))
    if kind == "count":
        shape = rng.choice(SHAPES)
        count = sum(1 for s, _ in shown if s == shape)
        return f"How many images show a {shape}?", NUMBER_WORDS[count]
    number = rng.randrange(len(shown)) + 1
    shape, colour = shown[number - 1]
    if kind == "colour":
        return f"What colour is the shape in image {number}?", colour
    return f"What shape is in image {number}?", shape


def make_conversation(rng: random.Random, conv_id: str, image_dir: Path, image_size: int) -> dict:
    total_images = rng.randint(1, 3)
    contents = [(rng.choice(SHAPES), rng.choice(list(COLOURS))) for _ in range(total_images)]
    num_rounds = rng.randint(1, 3)
    # Images arrive over the rounds: the first round shows at least one.
    per_round = [0] * num_rounds
    per_round[0] = 1
    for _ in range(total_images - 1):
        per_round[rng.randrange(num_rounds)] += 1

    image_paths, rounds, shown = [], [], []
    for round_index, count in enumerate(per_round):
        for _ in range(count):
            k = len(shown)
            shape, colour = contents[k]
            path = image_dir / f"{conv_id}_{k}.png"
            draw_shape(shape, colour, image_size, rng).save(path)
            image_paths.append(f"{image_dir.name}/{path.name}")
            shown.append(contents[k])
        question, answer = _question(rng, shown)
        rounds.append({"question": "<image>\n" * count + question, "answer": answer})
    return {"id": conv_id, "images": image_paths, "rounds": rounds}


def write_shapes_dataset(root: Path, num_train: int, num_eval: int, image_size: int, seed: int) -> None:
    rng = random.Random(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("eval", num_eval)):
        with open(root / f"{split}.jsonl", "w") as f:
            for i in range(count):
                record = make_conversation(rng, f"{split}-{i:06d}", image_dir, image_size)
                f.write(json.dumps(record) + "\n")


def ensure_shapes_dataset(
    root: str, num_train: int = 2000, num_eval: int = 200, image_size: int = 32, seed: int = 0
) -> Path:
    """Return the folder holding `train.jsonl` / `eval.jsonl`, generating it once.

    The folder name encodes every parameter, so a changed setting never reuses stale data.
    Generation goes to a temporary sibling and is renamed into place, so concurrent ranks or
    an interrupted run never see a half-written set.
    """
    target = Path(os.path.expanduser(root)) / (
        f"{FORMAT_VERSION}-n{num_train}-e{num_eval}-px{image_size}-seed{seed}"
    )
    return publish_folder(target, "eval.jsonl",
                          lambda folder: write_shapes_dataset(folder, num_train, num_eval, image_size, seed))


def corpus_lines() -> list[str]:
    """Sentences covering the synthetic vocabulary; used to train the bundled tokenizer."""
    lines = [f"What colour is the shape in image {n}?" for n in range(1, 9)]
    lines += [f"What shape is in image {n}?" for n in range(1, 9)]
    lines += [f"How many images show a {shape}?" for shape in SHAPES]
    lines += list(COLOURS) + list(SHAPES) + list(NUMBER_WORDS)
    return lines

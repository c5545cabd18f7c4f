"""The suites the project ships, generated on first use into `$DSVL_CACHE_DIR/suites` (no download).

- `synthetic`: the eval split of the default synthetic data (data/synthetic.py, native JSONL),
  the same conversations training's eval reads: 200 conversations, 1-3 images over 1-3 rounds.
- `demo`: a small multi-image, multi-round suite in the reference's eval JSON layout, with
  reference answers (the layout's third element): each conversation shows images over several
  rounds and asks text-only follow-ups that need the earlier images ("How many images show a
  circle?" after three images), so image numbering and history both matter.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from dsvl_exp.data.synthetic import COLOURS, NUMBER_WORDS, SHAPES, draw_shape, ensure_shapes_dataset
from dsvl_exp.files import publish_folder

NAMES = ("synthetic", "demo")
DEMO_VERSION = "demo-v1"
DEMO_CONVERSATIONS = 8


def cache_root() -> Path:
    return Path(os.path.expanduser(os.environ.get("DSVL_CACHE_DIR", "~/.cache/dsvl_exp")))


def ensure(name: str) -> Path:
    if name == "synthetic":
        return ensure_shapes_dataset(str(cache_root() / "synthetic")) / "eval.jsonl"
    if name == "demo":
        return ensure_demo_suite(cache_root() / "suites")
    raise KeyError(name)


def demo_conversation(rng: random.Random, index: int, image_dir: Path, image_size: int) -> list[list[str]]:
    """Three rounds: 2 images, then 1-2 more, then a text-only question over all of them."""
    rounds, shown = [], []

    def add_images(count: int) -> str:
        paths = []
        for _ in range(count):
            shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
            path = image_dir / f"demo{index}_{len(shown)}.png"
            draw_shape(shape, colour, image_size, rng).save(path)
            shown.append((shape, colour))
            paths.append(f"{image_dir.name}/{path.name}")
        return " ".join(paths)

    images = add_images(2)
    number = rng.randint(1, 2)
    rounds.append([f"What colour is the shape in image {number}?", images, shown[number - 1][1]])
    images = add_images(rng.randint(1, 2))
    number = len(shown)
    rounds.append([f"What shape is in image {number}?", images, shown[number - 1][0]])
    shape = rng.choice(SHAPES)
    rounds.append([f"How many images show a {shape}?", "", NUMBER_WORDS[sum(s == shape for s, _ in shown)]])
    return rounds


def ensure_demo_suite(root: Path, image_size: int = 32, seed: int = 0) -> Path:
    def fill(folder: Path) -> None:
        image_dir = folder / "images"
        image_dir.mkdir()
        rng = random.Random(seed)
        data = {f"shapes_story{i + 1}": demo_conversation(rng, i + 1, image_dir, image_size)
                for i in range(DEMO_CONVERSATIONS)}
        (folder / "demo.json").write_text(json.dumps(data, indent=1) + "\n")

    return publish_folder(root / DEMO_VERSION, "demo.json", fill) / "demo.json"

"""One tiny model trained through the real entry point, shared (session scope) by the chat,
evaluate and serve tests, and helpers to run those entry points."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from helpers import run_module, run_train  # noqa: F401  (run_module: imported from here by the inference tests)

# The tiny default learns the synthetic shapes well above the image-blind baselines in this many
# steps (measured: 0.57 exact match on the synthetic suite vs 0.36 per-question majority; 300 steps
# gave about 0.50); the final export lands in <run>/export.
TRAIN_STEPS = 400


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    run_train(run_dir, f"train.max_steps={TRAIN_STEPS}", "eval.every_n_steps=null", "eval.generation=false",
              "eval.monitor=eval/loss", "eval.max_batches=1", "launcher.omp_num_threads=1")
    return run_dir


@pytest.fixture(scope="session")
def shape_pictures(tmp_path_factory) -> dict[str, Path]:
    """Three pictures drawn like the synthetic data: red circle, blue square, green triangle."""
    from dsvl_exp.data.synthetic import draw_shape

    folder = tmp_path_factory.mktemp("pictures")
    paths = {}
    for i, (shape, colour) in enumerate([("circle", "red"), ("square", "blue"), ("triangle", "green")]):
        paths[shape] = folder / f"{colour}_{shape}.png"
        draw_shape(shape, colour, 32, random.Random(i)).save(paths[shape])
    return paths


def write_script(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def chat_script_answers(model: Path, records: list[dict], tmp_path: Path) -> list[dict]:
    script = write_script(tmp_path / "script.jsonl", records)
    result = run_module("dsvl_exp.chat", model, "--script", script, "--greedy", "--max-new-tokens", "8", cwd=tmp_path)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]

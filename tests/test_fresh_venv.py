"""An export folder loads in a fresh virtual environment holding only torch (CPU wheel, installed
first and alone), transformers, safetensors and pillow: no dsvl_exp, deepspeed, hydra or peft.
The Auto classes and the pipeline load it from the code in the folder; greedy ids equal the
project's; beam search and stop strings run.

Building the environment takes minutes (pip's cache serves the wheels; versions pinned to this
environment's so nothing is resolved afresh), so it runs when asked: `make test-fresh-venv`
(or DSVL_TEST_FRESH_VENV=1)."""

import json
import os
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import build_tiny_model
from helpers import run_cli, subprocess_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("DSVL_TEST_FRESH_VENV") != "1",
                       reason="builds a virtual environment (minutes): run with `make test-fresh-venv`"),
]
HERE = Path(__file__).resolve().parent


# the fresh environment's processes do not see this checkout's package
OUTSIDE_THE_CHECKOUT = ("PYTHONPATH",)


def pip(python: Path, *requirements: str) -> None:
    run_cli([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
            env=subprocess_env(drop=OUTSIDE_THE_CHECKOUT), timeout=1800)


def project_greedy_ids(model, tokenizer, folder: Path) -> list[int]:
    """The project's own path: ChatTemplate ids, one <image> per image, DSVLModel.generate."""
    from dsvl_exp.data.conversation import Conversation, Round
    from dsvl_exp.data.template import ChatTemplate, tokenize_generation_prompt
    from dsvl_exp.models.vision import CLIPImageProcessor

    conversation = Conversation("c", ("a", "b"), (Round("Compare image 1 and image 2.", "", 2),))
    ids = torch.tensor([tokenize_generation_prompt(tokenizer, ChatTemplate(), conversation, 0)])
    images = [Image.fromarray((np.random.RandomState(seed).rand(40, 40, 3) * 255).astype("uint8")) for seed in range(2)]
    pixels = CLIPImageProcessor.from_pretrained(str(folder))(images, return_tensors="pt")["pixel_values"]
    return model.generate(pixels, ids, torch.ones_like(ids), [2], max_new_tokens=8)[0]


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    run_cli([sys.executable, "-m", "venv", venv], env=subprocess_env(drop=OUTSIDE_THE_CHECKOUT), timeout=300)
    python = venv / "bin" / "python"
    pip(python, f"torch=={version('torch')}")  # first and alone: a CPU wheel
    pip(python, f"transformers=={version('transformers')}", f"safetensors=={version('safetensors')}",
        f"pillow=={version('pillow')}", f"numpy=={version('numpy')}")
    return python


@pytest.mark.parametrize("vision", ["clip", "qwen"])
def test_export_loads_with_transformers_alone(fresh_python, tmp_path, tokenizer, vision):
    from test_model_family import build

    folder = tmp_path / "export"
    model = build_tiny_model(tokenizer, attention="mmca", seed=3) if vision == "clip" else build(tokenizer, "qwen", attention="mmca")
    model.eval().save_pretrained(folder, tokenizer=tokenizer)
    expected = project_greedy_ids(model, tokenizer, folder)
    assert len(expected) >= 3  # (these seeds' answers do not end at once)

    env = subprocess_env(drop=OUTSIDE_THE_CHECKOUT, HF_MODULES_CACHE=str(tmp_path / "hf_modules"))
    result = run_cli([fresh_python, HERE / "fresh_venv_check.py", folder], cwd=tmp_path, env=env, timeout=900)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["modules"] == []  # nothing of dsvl_exp, deepspeed, hydra or peft was imported
    assert run_cli([fresh_python, "-c", "import dsvl_exp"], env=env, check=False).returncode != 0
    assert report["greedy"] == expected
    assert report["beam_shape"] == [1, report["prompt_length"] + 4]
    assert report["stopped"] == expected[:3]
    assert report["causal_lm"] == "DSVLForConditionalGeneration"
    assert report["pipeline_text"] == report["greedy_text"] != ""

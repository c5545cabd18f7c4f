"""What the training entry point imports on the way to a run without W&B, MLflow or LoRA:
the packages a run needs (torch, transformers, deepspeed) and none of the ones it does not
(the module list of `python -X importtime`, not a timing; BENCHMARKS.md has the start-up figures)."""

from __future__ import annotations

import re
import sys

import pytest

from helpers import run_cli

# Imported only when what needs them runs: W&B / MLflow / TensorBoard trackers, serving,
# inference and planning commands, the lmms-eval harness. (`mlflow` itself shows once: the failed
# import deepspeed's autotuner attempts, training/deepspeed_import.py.)
NOT_ON_THE_TRAINING_PATH = [
    "wandb", "mlflow.tracking", "pandas", "fastapi", "uvicorn", "gradio", "tensorboard", "torch.utils.tensorboard",
    "dsvl_exp.inference", "dsvl_exp.serve", "dsvl_exp.chat", "dsvl_exp.evaluate", "dsvl_exp.planning",
    "dsvl_exp.harness", "torch._inductor.compile_fx",
]


def imported_modules(stderr: str) -> set[str]:
    return {match.group(1) for match in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", stderr, re.MULTILINE)}


@pytest.mark.slow
def test_training_run_imports_only_what_it_uses(tmp_path):
    command = [sys.executable, "-X", "importtime", "-m", "dsvl_exp.train", "experiment=smoke", "train.max_steps=1",
               "eval.every_n_steps=null", "train.progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_cli(command, cwd=tmp_path)
    modules = imported_modules(result.stderr)
    assert {"torch", "transformers", "deepspeed", "dsvl_exp.training.recipe"} <= modules  # the list is real
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    unexpected = sorted(name for name in NOT_ON_THE_TRAINING_PATH if name in modules)
    assert unexpected == []


def test_deepspeed_import_leaves_mlflow_importable():
    code = ("import sys\nfrom dsvl_exp.training.deepspeed_import import import_deepspeed\nimport_deepspeed()\n"
            "assert 'mlflow' not in sys.modules, 'mlflow imported'\n"
            "import deepspeed.autotuning.autotuner as a\nassert a.has_mlflow is False\n"
            "import importlib.util\nprint(importlib.util.find_spec('mlflow') is not None)\n")
    result = run_cli([sys.executable, "-c", code], timeout=300)
    assert result.stdout.split()[-1] == "True"  # the project's MLflow tracker still finds the package

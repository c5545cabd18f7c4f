"""A normal (non-editable) install runs from any directory: the wheel carries the configs and the
tokenizer, and the entry point finds them through the package. Before: `pip install .` then
`python -m dsvl_exp.train experiment=smoke` exited 1 in 0.3 s (`Primary config directory not found`)."""

from __future__ import annotations

import shutil
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from helpers import REPO, run_cli, subprocess_env


@pytest.mark.slow
def test_wheel_install_runs_experiment_smoke_from_any_directory(tmp_path):
    # Build from a copy, so the build leaves nothing in the checkout (build/, *.egg-info).
    source = tmp_path / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    run_cli([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", source],
        cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("dsvl_exp-*.whl")
    shipped = zipfile.ZipFile(wheel).namelist()
    for name in ("dsvl_exp/conf/config.yaml", "dsvl_exp/conf/experiment/smoke.yaml", "dsvl_exp/conf/hydra/default.yaml",
                 "dsvl_exp/assets/tiny_tokenizer/tokenizer.json"):
        assert name in shipped, name

    # A fresh venv holding only the wheel; the dependencies come from this interpreter's
    # site-packages (a .pth line: plain path, so an editable install's finder there is not loaded).
    venv = tmp_path / "venv"
    run_cli([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    purelib = Path(run_cli([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).stdout.strip())
    (purelib / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # Without this checkout's src/ on PYTHONPATH (subprocess_env's default): pip would take the
    # package for installed already and skip the wheel.
    env = subprocess_env(drop=("PYTHONPATH", "DSVL_EXPERIMENTS_DIR"))
    run_cli([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], cwd=tmp_path, env=env)

    anywhere = tmp_path / "anywhere"
    anywhere.mkdir()
    located = run_cli([python, "-c", "import dsvl_exp; print(dsvl_exp.__file__)"], cwd=anywhere, env=env).stdout
    assert located.startswith(str(purelib)), located
    help_text = run_cli([venv / "bin" / "dsvl-train", "--help"], cwd=anywhere, env=env).stdout
    assert "Config groups (choose one with group=option):" in help_text and "smoke" in help_text
    job = run_cli([venv / "bin" / "dsvl-train", "experiment=smoke", "--cfg", "job"], cwd=anywhere, env=env).stdout
    assert "max_steps: 20" in job
    run_cli([python, "-m", "dsvl_exp.train", "experiment=smoke", "train.max_steps=2", "eval.generation=false",
         "eval.monitor=eval/loss", "train.progress_bar=false"], cwd=anywhere, env=env)
    (metrics,) = (anywhere / "outputs" / "smoke").rglob("metrics.jsonl")
    assert '"train/loss"' in metrics.read_text()

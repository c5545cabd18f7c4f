"""`lmms-eval --model dsvl` (the real lmms-eval package, when installed beside this project) on a
local task built from the synthetic suite: the same answers and accuracy as `evaluate` on the
same questions. Skipped where lmms-eval is not installed (`pip install lmms-eval`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from helpers import run_cli, subprocess_env
from inference_fixtures import run_module
from test_openai_api import TOKEN, api_server  # noqa: F401 (the API server fixture)

pytestmark = pytest.mark.slow


def require_lmms_eval() -> None:
    """Skipped where lmms-eval is not installed; `make test-lmms-eval` installs it and requires it."""
    if os.environ.get("DSVL_REQUIRE_LMMS_EVAL") == "1":
        import lmms_eval  # noqa: F401 (an ImportError fails the test)
    else:
        pytest.importorskip("lmms_eval")


def lmms_eval_samples(model_args: list[str], task_dir: Path, task: str, out: Path) -> tuple[dict, list[dict]]:
    command = [sys.executable, "-m", "lmms_eval", *model_args, "--tasks", task, "--include_path", str(task_dir), "--output_path", str(out),
               "--log_samples"]
    run_cli(command, cwd=out.parent, env=subprocess_env(HF_DATASETS_OFFLINE="1"), timeout=900)
    [results_file] = out.rglob("*_results.json")
    [samples_file] = out.rglob(f"*_samples_{task}.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    return json.loads(results_file.read_text()), sorted(samples, key=lambda s: s["doc_id"])


def test_lmms_eval_scores_the_model_as_evaluate_does(trained_run, tmp_path):
    require_lmms_eval()
    from dsvl_exp.harness.lmms_eval_task import write_task

    task_dir = tmp_path / "tasks"
    task = write_task("synthetic", task_dir, max_new_tokens=4)
    results, samples = lmms_eval_samples(["--model", "dsvl", "--model_args", f"pretrained={trained_run}", "--batch_size",
                                          "32"], task_dir, task, tmp_path / "lmms_out")

    evaluated = tmp_path / "evaluate_out"
    run_module("dsvl_exp.evaluate", trained_run, task_dir / "suite.json", "--out", evaluated, "--max-new-tokens", "4",
               cwd=tmp_path)
    [entry] = json.loads((evaluated / "accuracy.json").read_text())
    rows = [json.loads(line) for line in (evaluated / "suite.jsonl").read_text().splitlines()]

    assert len(samples) == len(rows) == 200
    assert [s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"]
            for s in samples] == [r["answer"] for r in rows]
    accuracy = results["results"][task]["exact_match,none"]
    print(f"lmms-eval exact_match {accuracy:.3f}, evaluate exact_match {entry['exact_match']:.3f}")
    assert accuracy == pytest.approx(entry["exact_match"]) and accuracy > entry["majority_baseline"]


def test_lmms_eval_through_the_openai_api_gives_the_same_answers(trained_run, api_server, tmp_path):
    """The route for harnesses that speak the OpenAI API: lmms-eval's own `openai` model."""
    require_lmms_eval()
    from dsvl_exp.harness.lmms_eval_task import write_task

    task_dir = tmp_path / "tasks"
    task = write_task("synthetic", task_dir, max_new_tokens=4)
    direct, direct_samples = lmms_eval_samples(["--model", "dsvl", "--model_args", f"pretrained={trained_run}"],
                                               task_dir, task, tmp_path / "direct")
    served, served_samples = lmms_eval_samples(
        ["--model", "openai", "--model_args", f"model_version={trained_run.name},base_url={api_server},api_key={TOKEN}"],
        task_dir, task, tmp_path / "served")
    answer = lambda s: s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"]  # noqa: E731
    assert [answer(s) for s in served_samples] == [answer(s) for s in direct_samples]
    assert served["results"][task]["exact_match,none"] == direct["results"][task]["exact_match,none"]

"""End to end through the real entry point (`python -m dsvl_exp.train`): seeded golden losses,
what a run writes and logs, clean user errors, and a multirun over every experiment."""

import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import REPO, only_sweep_dir, read_metrics, run_module, run_train, subprocess_env
from reference_fixtures import write_reference_root
from test_reference_recipe import TINY_MODELS

GOLDEN = json.loads((REPO / "tests" / "golden" / "smoke.json").read_text())  # scripts/update_golden.py
ACCURACY_GOLDEN = json.loads((REPO / "tests" / "golden" / "accuracy.json").read_text())  # the same script
EXPERIMENTS = sorted({path.stem for root in (REPO / "src" / "dsvl_exp" / "conf", REPO / "experiments")
                      for path in (root / "experiment").glob("*.yaml")})


def entry_point(cwd: Path, *overrides: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_module("dsvl_exp.train", *overrides, cwd=cwd, env=subprocess_env(**(env or {})), timeout=timeout, check=False)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One `experiment=smoke` run with Hydra choosing the run directory, shared by the checks below."""
    cwd = tmp_path_factory.mktemp("smoke")
    result = entry_point(cwd, *GOLDEN["overrides"])
    assert result.returncode == 0, result.stderr[-6000:]
    (run_dir,) = [path.parent for path in (cwd / "outputs").rglob("metrics.jsonl")]
    return cwd, run_dir, result


def assert_golden(metrics: list[dict], golden_values: dict[str, list]) -> None:
    for key, expected in golden_values.items():
        got = [[m["step"], m[key]] for m in metrics if key in m]
        assert [step for step, _ in got] == [step for step, _ in expected], key
        for (step, value), (_, golden) in zip(got, expected):
            assert value == pytest.approx(golden, rel=1e-4, abs=1e-6), (key, step)


@pytest.mark.slow
def test_smoke_losses_match_the_golden_values(smoke):
    assert_golden(read_metrics(smoke[1]), GOLDEN["values"])


@pytest.mark.slow
def test_a_longer_seeded_run_answers_the_pinned_rounds_right(tmp_path):
    """The smoke run's accuracy is 0.0 at both evaluations, which a metric that always says 0 also
    gives. This run (constant lr 3e-3, 60 steps) answers 1, then 2 of the 32 eval rounds exactly."""
    run_dir = tmp_path / "run"
    run_train(run_dir, *ACCURACY_GOLDEN["overrides"])
    metrics = read_metrics(run_dir)
    assert [[m["step"], m["eval/accuracy"]] for m in metrics if "eval/accuracy" in m] == [[30, 1 / 32], [60, 2 / 32]]
    assert_golden(metrics, ACCURACY_GOLDEN["values"])


@pytest.mark.slow
def test_smoke_metrics_records(smoke):
    metrics = read_metrics(smoke[1])
    train = [m for m in metrics if "train/loss" in m]
    assert [m["step"] for m in train] == [5, 10, 15, 20]
    for key in ("train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/samples_per_s"):
        assert all(isinstance(m[key], float) and math.isfinite(m[key]) for m in train), key
    assert train[-1]["train/lr"] == 0.0 and train[0]["train/lr"] > 0  # cosine to zero at max_steps
    stats = next(m for m in metrics if "data/train_samples" in m)
    assert (stats["data/train_samples"], stats["data/eval_samples"]) == (64, 16)


@pytest.mark.slow
def test_every_log_step_measures_throughput_mfu_step_split_and_memory(smoke):
    """metrics.jsonl and the console (piped here: no bar) carry the device numbers at every log step."""
    _, run_dir, result = smoke
    train = [m for m in read_metrics(run_dir) if "train/loss" in m]
    for m in train:
        assert m["perf/tokens_per_s_per_device"] == m["perf/tokens_per_s"] > 0  # one rank
        assert 0 < m["perf/mfu"] < 1 and 0 < m["perf/peak_memory_gib"] < 8
        split = m["perf/data_wait_s"] + m["perf/forward_backward_s"] + m["perf/optimizer_s"]
        assert 0 < m["perf/forward_backward_s"] and split <= m["perf/step_time_s"] * 1.01
        assert m["train/total_steps"] == 20
    console = result.stdout + result.stderr
    assert re.search(r"MFU is against a peak of [\d.e+]+ TFLOP/s per device \(measured, best of 3 \d+\^3 fp32", console)
    lines = re.findall(r"step 10/20 \| loss [\d.]+ \| lr \S+ \| tokens/s \d+ \(\d+/device\) \| MFU [\d.]+% \| "
                       r"step [\d.]+s = data [\d.]+ \+ fwd-bwd [\d.]+ \+ opt [\d.]+ \| mem [\d.]+ GiB \| eta \d+s", console)
    assert len(lines) == 1


@pytest.mark.slow
def test_run_directory_is_outputs_experiment_date_time(smoke):
    cwd, run_dir, _ = smoke
    relative = run_dir.relative_to(cwd).parts
    assert relative[:2] == ("outputs", "smoke") and len(relative) == 4
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", relative[2]) and re.fullmatch(r"\d{2}-\d{2}-\d{2}", relative[3])
    for name in (".hydra/overrides.yaml", "config.yaml", "metrics.jsonl", "train.log", "parameters.json"):
        assert (run_dir / name).exists(), name
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 20 and "${" not in (run_dir / "config.yaml").read_text()
    assert saved["model"]["image_order"] == "forward" and saved["train"]["precision"] == "fp32"  # plain strings


@pytest.mark.slow
def test_train_log_holds_what_the_console_shows(smoke):
    """Before: 11 lines, no config, no train loss, no result. Stdout is a pipe here (no progress bar)."""
    _, run_dir, result = smoke
    log = (run_dir / "train.log").read_text()
    values = dict(map(tuple, GOLDEN["values"]["train/loss"]))
    for text in ("resolved config:", "parameters:", f"step 5/20 | loss {values[5]:.4f} | lr ", " | tokens/s ",
                 "step 20 | eval/loss ", f"run directory: {run_dir}", f"final train loss {values[20]:.4f} | eval loss "):
        assert text in log, text
        assert text in result.stdout, text
    assert len(re.findall(r"step \d+/\d+ \| loss ", log)) == 4
    assert "FutureWarning" not in result.stderr


@pytest.mark.slow
def test_wandb_run_is_named_by_experiment_and_overrides_and_tagged(smoke):
    wandb = yaml.safe_load((smoke[1] / "config.yaml").read_text())["logger"]["wandb"]
    assert wandb["name"] == "smoke train.progress_bar=false" and wandb["group"] is None
    assert wandb["tags"] == ["vision:clip", "projection:baseline", "attention:causal", "zero:2"]


def test_wandb_identity_of_multirun_jobs():
    from dsvl_exp.training.logging import wandb_identity

    choices = {"vision": "qwen", "projection": "baseline", "zero": "3", "experiment": None}
    identity = wandb_identity(None, ["zero=3", "optim.lr=5e-4", "hydra.sweep.dir=x"], choices, "mmca", "multirun/default/d/t")
    assert identity == {"name": "default zero=3 optim.lr=5e-4", "group": "multirun/default/d/t",
                        "tags": ["vision:qwen", "projection:baseline", "attention:mmca", "zero:3"]}


@pytest.mark.parametrize("overrides, message", [
    (["+optim.lrr=1"], r"^error: unknown config key\(s\): optim\.lrr \(did you mean optim\.lr\?\)"),
    (["vision=qwen", "projection=vit"], r"^error: vision=qwen cannot be followed by projection=vit"),
    (["data=native", "data.train.0.path=t.jsonl"], r"^error: data\.eval\.0\.path is not set: .*data\.eval=\[\]"),
])
def test_user_errors_print_one_paragraph_and_exit_non_zero(tmp_path, overrides, message):
    result = entry_point(tmp_path, *overrides, "hydra.run.dir=run")
    assert result.returncode == 2
    assert re.match(message, result.stderr) and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "run").exists()  # refused before anything is written: no directory left behind


def test_hydra_full_error_shows_the_traceback(tmp_path):
    result = entry_point(tmp_path, "+optim.lrr=1", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 2 and "Traceback" in result.stderr and "ConfigError: unknown config key" in result.stderr


@pytest.mark.slow
def test_bad_data_fails_before_training_with_a_clear_message(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "s1", "images": ["missing.png"], "rounds": [{"question": "<image>\\nq", "answer": "a"}]}\n')
    result = entry_point(tmp_path, "data=native", f"data.train.0.path={data}", "data.eval=[]", "hydra.run.dir=run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.match(r"^error: .*d\.jsonl:1: image file not found: .*missing\.png", result.stderr), result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_multirun_over_every_experiment_at_zero_3_as_typed(tmp_path):
    """Each experiment file runs two steps on tiny models (the reference recipe on the fixture
    copy of its data) at `zero=3` typed as a user types it (the golden run above is ZeRO-2);
    the jobs share one W&B group and have distinct names."""
    root = write_reference_root(tmp_path / "data")
    result = entry_point(
        tmp_path, "-m", f"experiment={','.join(EXPERIMENTS)}", "zero=3", f"data.data_path={root}", *TINY_MODELS,
        "train.epochs=null", "train.max_steps=2", "train.global_batch_size=null", "train.micro_batch_size=2",
        "train.precision=fp32", "train.log_every_n_steps=1", "eval.max_batches=1", "eval.at_start=false",
        "eval.generation=false", "eval.monitor=eval/loss", "train.progress_bar=false")
    assert result.returncode == 0, result.stderr[-4000:]
    sweep_dir = only_sweep_dir(tmp_path)  # a sweep over experiment=... itself: multirun/default/...
    jobs = [yaml.safe_load((sweep_dir / str(job) / "config.yaml").read_text()) for job in range(len(EXPERIMENTS))]
    assert [job["zero"]["stage"] for job in jobs] == [3] * len(EXPERIMENTS)
    assert {job["logger"]["wandb"]["group"] for job in jobs} == {str(sweep_dir.relative_to(tmp_path))}
    assert [job["logger"]["wandb"]["name"].split()[0] for job in jobs] == EXPERIMENTS
    for job in range(len(jobs)):
        losses = [m["train/loss"] for m in read_metrics(sweep_dir / str(job)) if "train/loss" in m]
        assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)

"""Sweeps, manifests, diff, reproduce and sweep reports through the real entry points.

One grid multirun (a failing job first, then two that differ only in optim.lr) and one 3-trial
Optuna sweep are shared by every test of the module."""

import json
import os

import pytest
import torch
import yaml

from helpers import only_sweep_dir, read_metrics, run_module, subprocess_env

TINY = ["experiment=smoke", "eval.generation=false", "eval.monitor=eval/loss", "train.max_steps=3",
        "train.log_every_n_steps=1", "train.progress_bar=false"]
SECRET = "do-not-write-this-0123"


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Job 0 fails (a negative learning rate), jobs 1 and 2 differ only in optim.lr."""
    root = tmp_path_factory.mktemp("grid")
    # as the README writes sweeps: no hydra.sweep.dir, the default multirun/<experiment>/<date>/<time>
    result = run_module("dsvl_exp.train", "-m", "optim.lr=-1.0,0.001,0.002", *TINY,
                        cwd=root, env=subprocess_env(WANDB_API_KEY=SECRET, DSVL_SECRET_TOKEN=SECRET), check=False)
    return only_sweep_dir(root, "smoke"), result


@pytest.fixture(scope="module")
def optuna_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("optuna")
    result = run_module("dsvl_exp.train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *TINY, cwd=root, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return only_sweep_dir(root, "smoke"), result


def manifest(job_dir):
    return json.loads((job_dir / "manifest.json").read_text())


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_next_jobs_run(grid):
    sweep, result = grid
    assert result.returncode != 0  # the sweep reports the failure at its end ...
    failed = manifest(sweep / "0")
    assert failed["status"] == "failed" and "-1.0" in failed["error"], failed["error"]
    assert failed["outcome"]["exit_status"] == "failed"
    for job in ("1", "2"):  # ... after every job ran, each from a clean process state
        assert manifest(sweep / job)["status"] == "completed"
        assert [m["step"] for m in read_metrics(sweep / job) if "train/loss" in m] == [1, 2, 3]


@pytest.mark.slow
def test_manifest_holds_config_code_environment_derived_values_and_outcome(grid):
    sweep, _ = grid
    job = sweep / "1"
    m = manifest(job)
    assert m["config"]["optim"]["lr"] == 0.001 and m["config"]["train"]["max_steps"] == 3
    assert "optim.lr=0.001" in m["hydra"]["overrides"] and m["hydra"]["choices"]["experiment"] == "smoke"
    assert m["hydra"]["mode"] == "MULTIRUN" and m["command"][1:3] == ["-m", "optim.lr=-1.0,0.001,0.002"]
    git = m["code"]["git"]
    assert git == "not a git checkout" or (len(git["commit"]) == 40 and isinstance(git["dirty"], bool))
    if isinstance(git, dict) and git["diff_sha256"]:
        assert (job / git["diff_file"]).is_file()
    packages = m["environment"]["packages"]
    assert packages["torch"] and packages["deepspeed"] and packages["hydra-core"] == "1.3.8"
    assert any(line.startswith("torch==") for line in (job / "pip-freeze.txt").read_text().splitlines())
    # the job ran on this machine, so the manifest's hardware is this machine's
    assert (m["hardware"]["cpu_cores"], m["hardware"]["cpu_cores_usable"]) == (os.cpu_count(), len(os.sched_getaffinity(0)))
    assert m["hardware"]["gpus"]["count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    derived = m["derived"]
    assert derived["world_size"] == 1 and derived["global_batch_size"] == 8 * 1 * 1
    assert derived["deepspeed_config_final"]["train_batch_size"] == 8
    # one fp32 rank runs ZeRO-2 as stage 0 (zero.single_rank=stage0); DeepSpeed's filled-in config says so too
    assert derived["zero_stage"] == derived["deepspeed_config_final"]["zero_config"]["stage"] == 0
    assert derived["deepspeed_config_final"]["zero_config"]["reduce_bucket_size"] == 50_000_000  # the group's value
    assert set(derived["parameters"]) >= {"vision", "projection", "decoder"} and derived["tokens_per_image"] == 17
    assert m["seeds"]["seed"] == 0 and m["data_fingerprint"]["num_train"] == 64
    outcome = m["outcome"]
    last_eval = [r for r in read_metrics(job) if "eval/loss" in r][-1]["eval/loss"]
    assert outcome["final"]["eval/loss"] == last_eval == outcome["monitor_value"]
    assert outcome["best"]["train/loss"]["value"] <= outcome["final"]["train/loss"]
    assert outcome["wall_time_s"] > 0 and outcome["tokens_per_s_mean"] > 0 and outcome["peak_rss_bytes_rank0"] > 0
    assert m["status"] == outcome["exit_status"] == "completed"
    text = (job / "manifest.json").read_text()
    assert SECRET not in text and "WANDB_API_KEY" not in text


@pytest.mark.slow
def test_diff_of_runs_differing_in_lr_names_exactly_optim_lr(grid):
    sweep, _ = grid
    result = run_module("dsvl_exp.diff", str(sweep / "1"), str(sweep / "2"), "--format", "json", cwd=sweep, check=False)
    assert result.returncode == 1, result.stderr
    [comparison] = json.loads(result.stdout)
    assert comparison["verdict_text"] == "differs in meaning"
    meaningful = [(d["section"], d["key"]) for d in comparison["differences"] if d["kind"] == "meaningful"]
    assert [key for section, key in meaningful if section in ("config", "overrides")] == ["optim.lr", "optim.lr"]
    assert {section for section, _ in meaningful} <= {"config", "overrides", "outcomes"}
    # step 1's update has lr 0 (warmup) and step 2's loss comes before its update: they part at 3
    assert comparison["divergence"]["step"] == 3
    markdown = run_module("dsvl_exp.diff", str(sweep / "1"), str(sweep / "2"), "--format", "markdown", cwd=sweep, check=False)
    assert markdown.stdout.startswith("## differs in meaning") and "| ≠ | `optim.lr` | 0.001 | 0.002 |" in markdown.stdout
    whole_sweep = run_module("dsvl_exp.diff", str(sweep), "--format", "json", cwd=sweep, check=False)
    assert whole_sweep.returncode == 1 and len(json.loads(whole_sweep.stdout)) == 2
    missing = run_module("dsvl_exp.diff", str(sweep), str(sweep / "nope"), cwd=sweep, check=False)
    assert missing.returncode == 2 and "manifest.json" in missing.stderr


@pytest.mark.slow
def test_reproduce_gives_an_identical_run(grid, tmp_path):
    sweep, _ = grid
    out = tmp_path / "again"
    result = run_module("dsvl_exp.reproduce", str(sweep / "1"), "--out", str(out), "--format", "json", cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    [comparison] = json.loads(result.stdout)
    assert comparison["verdict"] == "identical", [d for d in comparison["differences"] if d["kind"] != "info"]
    assert read_metrics(out)[-1]["eval/loss"] == read_metrics(sweep / "1")[-1]["eval/loss"]
    assert manifest(out)["hydra"]["overrides"] == manifest(sweep / "1")["hydra"]["overrides"]


@pytest.mark.slow
def test_optuna_minimises_the_monitored_loss(optuna_sweep):
    sweep, result = optuna_sweep
    assert "Directions: ['minimize']" in result.stderr + result.stdout
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    values = {job: manifest(sweep / job)["outcome"]["monitor_value"] for job in ("0", "1", "2")}
    best_job = min(values, key=values.get)
    assert best["best_value"] == values[best_job]
    overrides = manifest(sweep / best_job)["hydra"]["overrides"]
    assert f"optim.lr={best['best_params']['optim.lr']}" in overrides
    assert f"projection={best['best_params']['projection']}" in overrides


def check_report(sweep, jobs: int):
    from PIL import Image

    result = run_module("dsvl_exp.sweep_report", str(sweep), cwd=sweep, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (sweep / "report.csv").read_text().splitlines()
    assert len(rows) == 1 + jobs
    table = [line for line in (sweep / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + jobs
    plots = sorted(sweep.glob("*.png"))
    assert sweep / "loss_curves.png" in plots and len(plots) >= 2
    for plot in plots:
        with Image.open(plot) as image:
            image.load()
            assert image.size[0] > 100
    return rows, table


@pytest.mark.slow
def test_sweep_report_on_a_grid_lists_every_job_best_first(grid):
    sweep, _ = grid
    rows, table = check_report(sweep, jobs=3)
    assert rows[0].split(",")[:4] == ["job", "status", "optim.lr", "eval/loss"]
    assert [row.split(",")[1] for row in rows[1:]][-1] == "failed"  # failed jobs last
    values = [float(row.split(",")[3]) for row in rows[1:3]]
    assert values == sorted(values) and "(best)" in table[1]
    assert (sweep / "eval_loss_vs_optim.lr.png").is_file()


@pytest.mark.slow
def test_sweep_report_on_an_optuna_sweep(optuna_sweep):
    sweep, _ = optuna_sweep
    rows, _ = check_report(sweep, jobs=3)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert float(rows[1].split(",")[rows[0].split(",").index("eval/loss")]) == pytest.approx(best["best_value"], rel=1e-3)


@pytest.mark.slow
def test_a_sweeper_direction_against_the_monitor_stops_before_any_job(tmp_path):
    # Hydra's Optuna plugin minimises by default; the default monitor is eval/accuracy
    result = run_module("dsvl_exp.train", "-m", "hydra/sweeper=optuna", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "hydra.sweeper.direction=minimize but eval.monitor=eval/accuracy should be maximized" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.glob("multirun/*/*/*/0"))

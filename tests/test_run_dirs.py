"""Where runs and sweeps are written, and what a refused start leaves: multirun with the default
sweep directory, run outputs kept out of the code fingerprint, nothing written by a refused start."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from helpers import REPO, only_sweep_dir, run_module


def train(cwd: Path, *arguments: str) -> subprocess.CompletedProcess:
    return run_module("dsvl_exp.train", *arguments, cwd=cwd, timeout=300, check=False)


def snapshot(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_a_multirun_with_the_default_sweep_dir_runs_every_job(tmp_path):
    # Both jobs are refused by the config check (eval/accuracy needs generation), which is quick;
    # the point is that the sweep directory resolves (it crashed before any job) and each job has one.
    result = train(tmp_path, "-m", "experiment=smoke", "optim.lr=1e-3,3e-3", "eval.generation=false")
    assert "HydraConfig was not set" not in result.stderr
    sweep = only_sweep_dir(tmp_path, "smoke")
    assert (sweep / "multirun.yaml").is_file()
    for job, lr in (("0", 1e-3), ("1", 3e-3)):
        manifest = json.loads((sweep / job / "manifest.json").read_text())
        assert manifest["status"] == "failed" and "eval.monitor" in manifest["error"]
        assert manifest["config"]["optim"]["lr"] == lr and tmp_path / manifest["hydra"]["sweep_dir"] == sweep
    assert result.returncode != 0


def test_a_sweep_over_experiments_keeps_one_sweep_dir(tmp_path):
    result = train(tmp_path, "-m", "experiment=smoke,dsvl_7b_reference", "eval.generation=false")
    sweep = only_sweep_dir(tmp_path)  # multirun/default/<date>/<time>: the jobs' experiments differ
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"], result.stderr[-2000:]
    assert all((sweep / job / "manifest.json").is_file() for job in ("0", "1"))


def test_a_refused_start_writes_nothing_into_the_run_it_refuses(tmp_path):
    run = tmp_path / "runs" / "done"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- experiment=smoke\n")
    (run / "manifest.json").write_text('{"status": "completed", "command": ["first"]}')
    (run / "metrics.jsonl").write_text('{"step": 1, "train/loss": 5.0}\n')
    (run / "train.log").write_text("the first run's log\n")
    before = snapshot(tmp_path)
    refused = train(tmp_path, "experiment=smoke", "optim.lr=0.5", "hydra.run.dir=runs/done")
    assert refused.returncode == 2 and "already holds a run" in refused.stderr and "Traceback" not in refused.stderr
    typo = train(tmp_path, "experiment=smoke", "+optim.lrr=1", "hydra.run.dir=runs/done")
    assert typo.returncode == 2 and "did you mean optim.lr?" in typo.stderr
    assert snapshot(tmp_path) == before
    assert refused.stderr.count("already holds a run") == 1  # once, not again as a log line on stdout
    assert "already holds a run" not in refused.stdout


def test_a_config_typo_leaves_no_new_run_directory(tmp_path):
    result = train(tmp_path, "+optim.lrr=1")
    assert result.returncode == 2 and "did you mean optim.lr?" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_run_outputs_are_not_code(tmp_path):
    from dsvl_exp.repro.environment import code_files

    (tmp_path / "studies" / "run_a" / ".hydra").mkdir(parents=True)
    (tmp_path / "studies" / "sweep").mkdir()
    (tmp_path / "studies" / "sweep" / "multirun.yaml").write_text("{}")
    untracked = ["notes.py", "outputs/default/d/t/train.log", "multirun/x/d/t/0/metrics.jsonl",
                 "runs/my_run/export/model.safetensors", "studies/run_a/metrics.jsonl",
                 "studies/run_a/checkpoints/step-1/x.pt", "studies/sweep/0/manifest.json", "studies/plan.py"]
    assert code_files(tmp_path, untracked) == ["notes.py", "studies/plan.py"]
    assert "runs/" in (REPO / ".gitignore").read_text().split()


def test_resume_settings_do_not_change_the_verdict():
    from dsvl_exp.config.meaning import volatile
    from dsvl_exp.repro.compare import compare_overrides, dict_differences

    overrides = compare_overrides(["experiment=smoke", "resume.checkpoint=auto"], ["experiment=smoke"])
    assert [(d.key, d.kind) for d in overrides] == [("resume.checkpoint", "volatile")]
    config = dict_differences("config", {"resume": {"checkpoint": "auto"}}, {"resume": {"checkpoint": None}},
                              volatile)
    assert [(d.key, d.kind) for d in config] == [("resume.checkpoint", "volatile")]


def test_a_reproduction_of_a_sweep_job_goes_beside_the_sweep_and_is_not_a_job(tmp_path):
    from dsvl_exp.repro.compare import multirun_jobs
    from dsvl_exp.reproduce import default_out

    sweep = tmp_path / "multirun" / "smoke" / "d" / "t"
    for job in ("0", "1", "0-repro"):  # 0-repro: where an earlier version wrote a reproduction
        (sweep / job).mkdir(parents=True)
        (sweep / job / "manifest.json").write_text("{}")
    (sweep / "multirun.yaml").write_text("{}")
    assert [p.name for p in multirun_jobs(sweep)] == ["0", "1"]
    assert default_out(sweep / "1") == sweep.with_name("t-repro") / "1"
    (sweep.with_name("t-repro") / "1").mkdir(parents=True)
    assert default_out(sweep / "1") == sweep.with_name("t-repro2") / "1"
    assert default_out(tmp_path / "runs" / "a") == tmp_path / "runs" / "a-repro"


def test_labels_show_overrides_as_typed():
    from dsvl_exp.config.overrides import as_typed, quote_numeric_group_choices

    typed = ["zero=3", "optim.lr=5e-4", "zero=2,3"]
    assert quote_numeric_group_choices(typed)[0] == "zero='3'"
    assert as_typed(quote_numeric_group_choices(typed)) == typed


def test_a_job_leaves_the_environment_as_it_found_it(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from dsvl_exp.repro.jobs import run_recorded_job

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    before = dict(os.environ)

    def job() -> float:
        os.environ.update({"OMP_NUM_THREADS": "2", "WANDB_SERVICE": "2-123-tcp-localhost-4567", "MASTER_PORT": "29500"})
        return 0.5

    assert run_recorded_job(OmegaConf.create({"seed": 0}), tmp_path, job) == 0.5
    assert dict(os.environ) == before

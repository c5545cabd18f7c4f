"""sweep_report on sweeps written here job by job (manifest.json + metrics.jsonl, as a multirun
writes them): ties, seeds, the best job's command and the charts."""

from __future__ import annotations

import json
from pathlib import Path

from dsvl_exp.repro.report import build_report, to_markdown, write_report


def write_job(sweep: Path, number: int, overrides: dict, monitor: str, value: float, losses: list[float]) -> None:
    job = sweep / str(number)
    job.mkdir(parents=True)
    manifest = {"status": "completed", "hydra": {"overrides": [f"{k}={v}" for k, v in overrides.items()]},
                "config": {"eval": {"monitor": monitor}},
                "outcome": {"final": {monitor: value, "train/loss": losses[-1]}, "monitor_value": value,
                            "wall_time_s": 10.0, "tokens_per_s_mean": 1000.0}}
    (job / "manifest.json").write_text(json.dumps(manifest))
    records = [{"step": 10 * (i + 1), "train/loss": loss} for i, loss in enumerate(losses)]
    records.append({"step": 10 * len(losses), "eval/loss": losses[-1] + 0.1})
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def lr_seed_sweep(root: Path) -> Path:
    """Five learning rates over two decades, each with seeds 0 and 1."""
    sweep = root / "multirun" / "default" / "d" / "t"
    number = 0
    for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2):
        for seed in (0, 1):
            final = 2.0 + abs(lr - 1e-3) * 100 + 0.05 * seed
            write_job(sweep, number, {"experiment": "smoke", "optim.lr": lr, "seed": seed}, "eval/loss", final,
                      [6.0, 4.0, final])
            number += 1
    return sweep


def test_a_seeded_grid_gets_mean_and_std_per_configuration_and_the_best_command(tmp_path):
    sweep = lr_seed_sweep(tmp_path)
    report, written = write_report(sweep)
    markdown = to_markdown(report)
    assert "Across seeds (`eval/loss`, mean ± sample std):" in markdown
    assert "| experiment=smoke optim.lr=0.001 | 2 | 2.025 ± 0.035 | 4, 5 |" in markdown
    assert markdown.rstrip().endswith("python -m dsvl_exp.train experiment=smoke optim.lr=0.001 seed=0")
    assert [job.name for job in report.jobs if job.best] == ["4"] and "tie" not in markdown
    assert {path.name for path in written} >= {"eval_loss_vs_optim.lr.png", "eval_loss_vs_seed.png", "loss_curves.png"}


def test_a_sweep_where_every_job_ties_says_so(tmp_path):
    sweep = tmp_path / "sweep"
    for number, lr in enumerate((1e-3, 3e-3, 1e-2, 3e-2)):
        write_job(sweep, number, {"experiment": "smoke", "optim.lr": lr}, "eval/accuracy", 0.0, [6.0, 5.0 - number])
    (sweep / "multirun.yaml").write_text("{}")
    report = build_report(sweep)
    markdown = to_markdown(report)
    assert all(job.best for job in report.jobs)
    assert "| 0 (tied best) |" in markdown and "(best)" not in markdown.replace("(tied best)", "")
    assert "All jobs tie for the best `eval/accuracy` (0): jobs 0, 1, 2, 3." in markdown
    write_report(sweep)
    assert (sweep / "eval_accuracy_vs_optim.lr.png").is_file()


def test_the_end_of_a_multirun_prints_the_best_job_as_a_single_run(tmp_path, capsys):
    from omegaconf import OmegaConf

    from dsvl_exp.repro.sweeps import SweepSummary

    sweep = lr_seed_sweep(tmp_path)
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    printed = capsys.readouterr().out
    assert f"sweep {sweep}: best eval/loss 2 in job 4; as a single run:" in printed
    assert "  python -m dsvl_exp.train experiment=smoke optim.lr=0.001 seed=0\n" in printed


def test_the_best_command_spells_group_choices_as_typed(tmp_path):
    from dsvl_exp.repro.report import best_command

    sweep = tmp_path / "sweep"
    write_job(sweep, 0, {"zero": "'3'", "optim.lr": 1e-3}, "eval/loss", 2.0, [3.0, 2.0])
    (sweep / "multirun.yaml").write_text("{}")
    assert best_command(build_report(sweep)) == "python -m dsvl_exp.train zero=3 optim.lr=0.001"

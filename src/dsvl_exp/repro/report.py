"""A sweep's jobs in one table (markdown + CSV, best first) and plots (matplotlib).

Reads each job's manifest.json and metrics.jsonl, and for Optuna sweeps the sweep directory's
optimization_results.yaml (its best trial is marked). Swept parameters are the override keys
whose values differ between jobs.
"""

from __future__ import annotations

import csv
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from dsvl_exp.repro.compare import RunError, multirun_jobs
from dsvl_exp.repro.manifest import read_manifest
from dsvl_exp.repro.metrics import direction_for, read_metrics

OPTUNA_RESULTS = "optimization_results.yaml"
METRIC_COLUMNS = ("train/loss", "eval/loss", "eval/accuracy")


@dataclass
class Job:
    name: str
    path: Path
    status: str
    overrides: dict[str, str]
    final: dict
    monitor_value: float | None
    wall_time_s: float | None
    tokens_per_s: float | None
    error: str | None
    metrics: list[dict] = field(default_factory=list)
    best: bool = False
    override_list: list[str] = field(default_factory=list)  # as given, in order


@dataclass
class SweepReport:
    sweep_dir: Path
    monitor: str
    direction: str
    swept: list[str]
    jobs: list[Job]
    optuna: dict | None


def read_job(path: Path) -> Job:
    manifest = read_manifest(path)
    outcome = manifest.get("outcome") or {}
    overrides = dict(item.split("=", 1) for item in (manifest.get("hydra") or {}).get("overrides", []) if "=" in item)
    return Job(
        name=path.name, path=path, status=manifest.get("status", "unknown"), overrides=overrides,
        final=outcome.get("final") or {}, monitor_value=outcome.get("monitor_value"),
        wall_time_s=outcome.get("wall_time_s"), tokens_per_s=outcome.get("tokens_per_s_mean"),
        error=manifest.get("error"), metrics=read_metrics(path),
        override_list=list((manifest.get("hydra") or {}).get("overrides", [])),
    )


def build_report(sweep_dir: Path) -> SweepReport:
    sweep_dir = Path(sweep_dir)
    paths = multirun_jobs(sweep_dir) if sweep_dir.is_dir() else []
    if not paths:
        raise RunError(f"{sweep_dir}: no jobs with manifest.json; pass the directory of a "
                       "`python -m dsvl_exp.train -m ...` sweep (hydra.sweep.dir)")
    jobs = [read_job(path) for path in paths]
    monitor = next(((read_manifest(p).get("config") or {}).get("eval", {}).get("monitor") for p in paths), None)
    monitor = monitor or "eval/loss"
    direction = direction_for(monitor)
    keys = sorted({key for job in jobs for key in job.overrides})
    swept = [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1]
    optuna = None
    if (sweep_dir / OPTUNA_RESULTS).is_file():
        from omegaconf import OmegaConf

        optuna = OmegaConf.to_container(OmegaConf.load(sweep_dir / OPTUNA_RESULTS))
        direction = sweep_direction(sweep_dir) or direction
    order = sorted(jobs, key=lambda job: sort_key(job, direction))
    if order and usable(order[0]):  # every job with the best value (a tie is said, not hidden)
        for job in order:
            job.best = usable(job) and job.monitor_value == order[0].monitor_value
    return SweepReport(sweep_dir, monitor, direction, swept, order, optuna)


def usable(job: Job) -> bool:
    value = job.monitor_value
    return job.status == "completed" and isinstance(value, (int, float)) and math.isfinite(value)


def best_jobs(report: SweepReport) -> list[Job]:
    return [job for job in report.jobs if job.best]


def best_command(report: SweepReport) -> str | None:
    """The single run that repeats the best job (the first of tied ones, in the table's order)."""
    best = best_jobs(report)
    if not best:
        return None
    from dsvl_exp.config.overrides import as_typed  # zero=3 as the user types it, not the quoted zero='3'

    return " ".join(["python -m dsvl_exp.train", *(shlex.quote(item) for item in as_typed(best[0].override_list))])


def seed_groups(report: SweepReport) -> list[tuple[str, list[Job]]]:
    """Jobs that differ only in `seed`, grouped (two seeds or more): the configuration, its jobs."""
    groups: dict[str, list[Job]] = {}
    for job in report.jobs:
        if usable(job):
            key = " ".join(f"{k}={v}" for k, v in sorted(job.overrides.items()) if k != "seed") or "(defaults)"
            groups.setdefault(key, []).append(job)
    return [(key, jobs) for key, jobs in groups.items()
            if len({job.overrides.get("seed") for job in jobs}) > 1]


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def sweep_direction(sweep_dir: Path) -> str | None:
    """The direction the Optuna sweeper used, from the sweep's saved multirun.yaml."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    match = re.search(r"^\s+direction:\s*(\w+)\s*$", path.read_text(), re.MULTILINE)
    return match.group(1).lower() if match and match.group(1).lower() in ("minimize", "maximize") else None


def sort_key(job: Job, direction: str) -> tuple:
    value = job.monitor_value
    return (not usable(job), (value if direction == "minimize" else -value) if usable(job) else 0.0,
            (not job.name.isdigit(), int(job.name) if job.name.isdigit() else 0, job.name))


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def short_number(text: str) -> str:
    number = as_number(text)
    return f"{number:.4g}" if number is not None and not text.isdigit() else text


def rows(report: SweepReport, precise: bool = False) -> tuple[list[str], list[list[str]]]:
    header = ["job", "status", *report.swept, report.monitor,
              *[m for m in METRIC_COLUMNS if m != report.monitor and any(m in j.final for j in report.jobs)],
              "wall_time_s", "tokens_per_s", "error"]
    table = []
    tie = len(best_jobs(report)) > 1
    for job in report.jobs:
        metric_cells = [fmt(job.final.get(m)) for m in header[2 + len(report.swept) + 1:-3]]
        table.append([job.name + (" (tied best)" if tie and job.best else " (best)" if job.best else ""), job.status,
                      *[(str if precise else short_number)(job.overrides.get(key, "")) for key in report.swept],
                      fmt(job.monitor_value), *metric_cells,
                      fmt(job.wall_time_s), fmt(job.tokens_per_s), job.error or ""])
    return header, table


def to_markdown(report: SweepReport) -> str:
    header, table = rows(report)
    lines = [f"Sweep `{report.sweep_dir.name}`: {len(report.jobs)} jobs, monitor `{report.monitor}` "
             f"({report.direction}d), best first.", ""]
    if report.optuna:
        lines += [f"Optuna best: {report.optuna.get('best_value')} with {report.optuna.get('best_params')}", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in table:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines + tie_note(report) + seed_table(report) + best_command_lines(report)) + "\n"


def tie_note(report: SweepReport) -> list[str]:
    best = best_jobs(report)
    if len(best) < 2:
        return []
    everyone = len(best) == len(report.jobs)
    return ["", f"{'All' if everyone else len(best)} jobs tie for the best `{report.monitor}` "
                f"({fmt(best[0].monitor_value)}): jobs {', '.join(job.name for job in best)}. The monitor does not "
                "separate them; compare another metric or train longer."]


def seed_table(report: SweepReport) -> list[str]:
    groups = seed_groups(report)
    if not groups:
        return []
    lines = ["", f"Across seeds (`{report.monitor}`, mean ± sample std):", "",
             "| configuration | seeds | mean ± std | jobs |", "|---|---:|---|---|"]
    for key, jobs in groups:
        mean, std = mean_std([job.monitor_value for job in jobs])
        lines.append(f"| {key} | {len(jobs)} | {mean:.4g} ± {std:.2g} | {', '.join(job.name for job in jobs)} |")
    return lines


def best_command_lines(report: SweepReport) -> list[str]:
    command = best_command(report)
    return [] if command is None else ["", f"Best job ({best_jobs(report)[0].name}) as a single run:", "",
                                        f"    {command}"]


def write_csv(report: SweepReport, path: Path) -> None:
    header, table = rows(report, precise=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[cell.replace(" (best)", "") for cell in row[:1]] + row[1:] for row in table])


def as_number(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def label(job: Job, swept: list[str]) -> str:
    return f"{job.name}: " + " ".join(f"{key.split('.')[-1]}={short_number(job.overrides.get(key, ''))}" for key in swept)


def x_positions(values: list[str | None]) -> tuple[list[float], list[str] | None]:
    """Numbers as themselves; anything else as evenly spaced categories (returned as tick labels)."""
    numbers = [as_number(v) for v in values]
    if numbers and all(n is not None for n in numbers):
        return numbers, None
    categories = sorted({str(v) for v in values})
    return [float(categories.index(str(v))) for v in values], categories


def write_report(sweep_dir: Path, out_dir: Path | None = None) -> tuple[SweepReport, list[Path]]:
    from dsvl_exp.repro.report_plots import plot_loss_curves, plot_metric_vs_parameters

    report = build_report(sweep_dir)
    out_dir = Path(out_dir or sweep_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(to_markdown(report))
    write_csv(report, out_dir / "report.csv")
    written = [out_dir / "report.md", out_dir / "report.csv"]
    written += plot_metric_vs_parameters(report, out_dir)
    written.append(plot_loss_curves(report, out_dir))
    return report, written

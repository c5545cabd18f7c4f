"""A sweep's jobs in one table (markdown + CSV, best first) and plots (matplotlib).

Reads each job's manifest.json and metrics.jsonl, and for Optuna sweeps the sweep directory's
optimization_results.yaml (its best trial is marked). Swept parameters are the override keys
whose values differ between jobs.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from dsvl_exp.repro.compare import RunError, multirun_jobs
from dsvl_exp.repro.manifest import read_manifest
from dsvl_exp.repro.metrics import direction_for, read_metrics, series

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
    if order and order[0].monitor_value is not None and order[0].status == "completed":
        order[0].best = True
    return SweepReport(sweep_dir, monitor, direction, swept, order, optuna)


def sweep_direction(sweep_dir: Path) -> str | None:
    """The direction the Optuna sweeper used, from the sweep's saved multirun.yaml."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    match = re.search(r"^\s+direction:\s*(\w+)\s*$", path.read_text(), re.MULTILINE)
    return match.group(1).lower() if match and match.group(1).lower() in ("minimize", "maximize") else None


def sort_key(job: Job, direction: str) -> tuple:
    value = job.monitor_value
    usable = job.status == "completed" and isinstance(value, (int, float)) and math.isfinite(value)
    return (not usable, (value if direction == "minimize" else -value) if usable else 0.0, job.name)


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
    for job in report.jobs:
        metric_cells = [fmt(job.final.get(m)) for m in header[2 + len(report.swept) + 1:-3]]
        table.append([job.name + (" (best)" if job.best else ""), job.status,
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
    return "\n".join(lines) + "\n"


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


def plot_metric_vs_parameters(report: SweepReport, out_dir: Path) -> list[Path]:
    """One chart per swept parameter; in a grid, one series per value of the other parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [j for j in report.jobs if j.status == "completed" and isinstance(j.monitor_value, (int, float))]
    paths = []
    for key in report.swept:
        others = [other for other in report.swept if other != key]
        figure, axes = plt.subplots(figsize=(5.5, 3.8))
        xs, categories = x_positions([job.overrides.get(key) for job in done])
        series_of = {}
        for job, x in zip(done, xs):
            name = " ".join(f"{o.split('.')[-1]}={short_number(job.overrides.get(o, ''))}" for o in others)
            series_of.setdefault(name if len(others) == 1 else "", []).append((x, job))
        for name, points in sorted(series_of.items()):
            axes.scatter([x for x, _ in points], [job.monitor_value for _, job in points], label=name or None)
            for x, job in points:
                axes.annotate(job.name, (x, job.monitor_value), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if categories is not None:
            axes.set_xticks(range(len(categories)), categories)
        elif min(xs) > 0 and max(xs) / min(xs) > 20:
            axes.set_xscale("log")
        if any(series_of):
            axes.legend(fontsize=7)
        axes.set_xlabel(key)
        axes.set_ylabel(report.monitor)
        axes.set_title(f"{report.monitor} vs {key} ({report.direction[:3]})")
        figure.tight_layout()
        path = out_dir / f"{report.monitor.replace('/', '_')}_vs_{key.replace('/', '_')}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        paths.append(path)
    return paths


def plot_loss_curves(report: SweepReport, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for job in report.jobs:
        train = series(job.metrics, "train/loss")
        if not train:
            continue
        line, = axes.plot(*zip(*train), label=label(job, report.swept), linewidth=1.2)
        evaluation = series(job.metrics, "eval/loss")
        if evaluation:
            axes.plot(*zip(*evaluation), linestyle="--", marker="o", markersize=3, color=line.get_color())
    axes.set_xlabel("step")
    axes.set_ylabel("loss (solid: train, dashed: eval)")
    axes.set_title("loss curves of all jobs")
    axes.legend(fontsize=7)
    figure.tight_layout()
    path = out_dir / "loss_curves.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_report(sweep_dir: Path, out_dir: Path | None = None) -> tuple[SweepReport, list[Path]]:
    report = build_report(sweep_dir)
    out_dir = Path(out_dir or sweep_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(to_markdown(report))
    write_csv(report, out_dir / "report.csv")
    written = [out_dir / "report.md", out_dir / "report.csv"]
    written += plot_metric_vs_parameters(report, out_dir)
    written.append(plot_loss_curves(report, out_dir))
    return report, written

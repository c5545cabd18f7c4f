"""A sweep report's charts (matplotlib, headless): the monitored metric against each swept
parameter, and every job's loss curves on one chart."""

from __future__ import annotations

from pathlib import Path

from dsvl_exp.repro.metrics import series
from dsvl_exp.repro.report import SweepReport, best_jobs, label, short_number, usable, x_positions

MAX_VALUE_TICKS = 6  # up to this many distinct values, each gets its own tick and label


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_vs_parameters(report: SweepReport, out_dir: Path) -> list[Path]:
    """One chart per swept parameter; in a grid, one series per value of the other parameter."""
    plt = pyplot()
    done = [job for job in report.jobs if usable(job)]
    paths = []
    for key in report.swept:
        others = [other for other in report.swept if other != key]
        figure, axes = plt.subplots(figsize=(6, 4))
        xs, categories = x_positions([job.overrides.get(key) for job in done])
        # one series per value of the other parameter in a grid; not for continuous (Optuna) values,
        # where every series would hold one point and the legend would list every job
        split = len(others) == 1 and len({job.overrides.get(others[0]) for job in done}) <= MAX_VALUE_TICKS
        series_of = {}
        for job, x in zip(done, xs):
            name = " ".join(f"{o.split('.')[-1]}={short_number(job.overrides.get(o, ''))}" for o in others)
            series_of.setdefault(name if split else "", []).append((x, job))
        for name, points in sorted(series_of.items()):
            axes.scatter([x for x, _ in points], [job.monitor_value for _, job in points], label=name or None,
                         alpha=0.8)
        annotate_points(axes, [(x, job) for points in series_of.values() for x, job in points])
        set_parameter_axis(axes, xs, categories)
        axes.margins(y=0.12)  # room for the job labels above the top points
        if any(series_of):
            axes.legend(fontsize=7, loc="best")
        tied = best_jobs(report)
        if len(tied) > 1:
            axes.text(0.01, 0.01, f"{len(tied)} jobs tie for the best ({short_number(str(tied[0].monitor_value))})",
                      transform=axes.transAxes, fontsize=8, color="dimgray")
        axes.set_xlabel(key)
        axes.set_ylabel(report.monitor)
        axes.set_title(f"{report.monitor} vs {key} ({report.direction[:3]})")
        figure.tight_layout()
        path = out_dir / f"{report.monitor.replace('/', '_')}_vs_{key.replace('/', '_')}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        paths.append(path)
    return paths


def annotate_points(axes, points) -> None:
    """One label per point position: jobs landing on the same spot (ties) share it ("0,2,4")."""
    at: dict[tuple[float, float], list[str]] = {}
    for x, job in points:
        at.setdefault((x, job.monitor_value), []).append(job.name)
    for (x, y), names in at.items():
        text = ",".join(names) if len(names) <= 6 else f"{names[0]}..{names[-1]} ({len(names)} jobs)"
        axes.annotate(text, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")


def set_parameter_axis(axes, xs: list[float], categories: list[str] | None) -> None:
    """Categories by name; numbers on a log axis when they span more than 20x. A log axis gets its
    labels only at the swept values (few) or at powers of ten (many): matplotlib's default also
    labels minor ticks inside a decade, and those labels ran together."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    if categories is not None:
        axes.set_xticks(range(len(categories)), categories)
        axes.set_xlim(-0.5, len(categories) - 0.5)
        return
    distinct = sorted(set(xs))
    if distinct and min(distinct) > 0 and max(distinct) / min(distinct) > 20:
        axes.set_xscale("log")
        axes.xaxis.set_minor_formatter(NullFormatter())
        if len(distinct) <= MAX_VALUE_TICKS:
            axes.xaxis.set_major_locator(FixedLocator(distinct))
            axes.xaxis.set_minor_locator(NullLocator())
            axes.set_xticklabels([short_number(str(value)) for value in distinct])
    elif len(distinct) <= MAX_VALUE_TICKS:
        axes.set_xticks(distinct, [short_number(str(value)) for value in distinct])
    for tick in axes.get_xticklabels():
        tick.set_rotation(30)
        tick.set_horizontalalignment("right")


def plot_loss_curves(report: SweepReport, out_dir: Path) -> Path:
    """All jobs' train (solid) and eval (dashed) losses; the best job drawn on top, thicker, and the
    legend outside the axes so it covers no curve."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(9, 4.5))
    best = {job.name for job in best_jobs(report)[:1]}
    for job in sorted(report.jobs, key=lambda job: job.name in best):  # the best one last: on top
        train = series(job.metrics, "train/loss")
        if not train:
            continue
        is_best = job.name in best
        line, = axes.plot(*zip(*train), label=label(job, report.swept) + (" (best)" if is_best else ""),
                          linewidth=2.4 if is_best else 1.0, alpha=1.0 if is_best else 0.75, zorder=3 if is_best else 2)
        evaluation = series(job.metrics, "eval/loss")
        if evaluation:
            axes.plot(*zip(*evaluation), linestyle="--", marker="o", markersize=3, color=line.get_color(),
                      zorder=line.get_zorder())
    axes.set_xlabel("step")
    axes.set_ylabel("loss (solid: train, dashed: eval)")
    axes.set_title("loss curves of all jobs")
    handles, labels = axes.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: (not labels[i].endswith("(best)"), i))
    axes.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7, loc="upper left",
                bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    figure.tight_layout()
    path = out_dir / "loss_curves.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path

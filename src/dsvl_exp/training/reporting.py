"""What rank 0 reports: the config tree, parameter counts, the end-of-run summary. Rendered
with rich as plain text and written through logging, so the console and train.log hold the
same lines."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

log = logging.getLogger(__name__)


def rendered(renderable) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None, highlight=False)
    console.print(renderable)
    return console.file.getvalue().rstrip()


def print_config_tree(cfg: DictConfig) -> None:
    tree = Tree("config", guide_style="dim")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for key, value in resolved.items():
        branch = tree.add(f"[bold]{key}[/bold]")
        branch.add(OmegaConf.to_yaml(OmegaConf.create({key: value})).split("\n", 1)[1].rstrip() or "null"
                   if isinstance(value, dict) else repr(value))
    log.info("resolved config:\n%s", rendered(tree))


def print_parameter_table(counts: dict[str, dict[str, int]]) -> None:
    table = Table(title="parameters")
    table.add_column("module")
    table.add_column("total", justify="right")
    table.add_column("trainable", justify="right")
    for module, entry in counts.items():
        table.add_row(module, f"{entry['total']:,}", f"{entry['trainable']:,}")
    total = sum(e["total"] for e in counts.values())
    trainable = sum(e["trainable"] for e in counts.values())
    table.add_row("[bold]all[/bold]", f"{total:,}", f"{trainable:,}")
    log.info("parameters:\n%s", rendered(table))


def print_summary(run_dir: Path, summary: dict) -> None:
    log.info("run directory: %s", run_dir)
    log.info("%s", summary_line(summary))


def summary_line(summary: dict) -> str:
    """The final numbers; a metric the run never logged (no eval, or eval without generation) is left out."""
    shown = [f"{label} {summary[key]:.4f}" for key, label in SUMMARY_METRICS if isinstance(summary.get(key), (int, float))]
    return " | ".join([*shown, f"steps {summary.get('steps')}"])


SUMMARY_METRICS = (("train/loss", "final train loss"), ("eval/loss", "eval loss"),
                   ("eval/accuracy", "eval answer accuracy"))

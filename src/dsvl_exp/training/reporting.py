"""Console output on rank 0: the config tree, parameter counts, the end-of-run summary."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

console = Console(stderr=False, highlight=False)


def print_config_tree(cfg: DictConfig) -> None:
    tree = Tree("config", guide_style="dim")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for key, value in resolved.items():
        branch = tree.add(f"[bold]{key}[/bold]")
        branch.add(OmegaConf.to_yaml(OmegaConf.create({key: value})).split("\n", 1)[1].rstrip() or "null"
                   if isinstance(value, dict) else repr(value))
    console.print(tree)


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
    console.print(table)


def print_summary(run_dir: Path, summary: dict) -> None:
    def fmt(key: str) -> str:
        value = summary.get(key)
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    console.print(f"run directory: {run_dir}")
    console.print(
        f"final train loss {fmt('train/loss')} | eval loss {fmt('eval/loss')} | "
        f"eval answer accuracy {fmt('eval/accuracy')} | steps {summary.get('steps')}"
    )

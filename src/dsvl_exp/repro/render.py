"""`dsvl_exp.diff` output: a rich table for the terminal, markdown for a pull request, JSON."""

from __future__ import annotations

import json
from typing import Any

from dsvl_exp.repro.compare import SECTIONS, Comparison

KIND_MARK = {"meaningful": "≠", "volatile": "~", "info": "·"}
MAX_VALUE_CHARS = 80


def short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def divergence_text(comparison: Comparison) -> str | None:
    d = comparison.divergence
    if d is None:
        return None
    return f"loss curves diverge first at step {d['step']} ({d['metric']}: {d['a']!r} vs {d['b']!r})"


def by_section(comparison: Comparison) -> list[tuple[str, list]]:
    return [(section, [d for d in comparison.differences if d.section == section]) for section in SECTIONS]


def to_markdown(comparisons: list[Comparison]) -> str:
    lines = []
    for comparison in comparisons:
        lines += [f"## {comparison.verdict_text}", "", f"A: `{comparison.a}`  ", f"B: `{comparison.b}`", ""]
        if (text := divergence_text(comparison)) is not None:
            lines += [text, ""]
        for section, differences in by_section(comparison):
            if not differences:
                continue
            lines += [f"### {section}", "", "| | key | A | B | note |", "|---|---|---|---|---|"]
            for d in differences:
                cells = (KIND_MARK[d.kind], f"`{d.key}`", short(d.a), short(d.b), d.note)
                lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
            lines.append("")
    lines.append("≠ differs in meaning, ~ volatile (paths, hosts, labels), · information")
    return "\n".join(lines) + "\n"


def to_json(comparisons: list[Comparison]) -> str:
    return json.dumps([c.to_dict() for c in comparisons], indent=1, default=str) + "\n"


def print_rich(comparisons: list[Comparison], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(highlight=False)
    colours = {"identical": "green", "volatile": "yellow", "differs": "red"}
    for comparison in comparisons:
        console.print(f"[bold {colours[comparison.verdict]}]{comparison.verdict_text}[/]")
        console.print(f"A: {comparison.a}\nB: {comparison.b}")
        if (text := divergence_text(comparison)) is not None:
            console.print(text)
        for section, differences in by_section(comparison):
            if not differences:
                continue
            table = Table(title=section, title_justify="left", show_lines=False)
            for column in ("", "key", "A", "B", "note"):
                table.add_column(column, overflow="fold")
            for d in differences:
                style = {"meaningful": "red", "volatile": "yellow", "info": "dim"}[d.kind]
                table.add_row(KIND_MARK[d.kind], d.key, short(d.a), short(d.b), d.note, style=style)
            console.print(table)
        console.print()

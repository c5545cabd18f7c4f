"""Summarise a sweep: a table of every job, best first, and plots.

    python -m dsvl_exp.sweep_report multirun/2026-01-01/12-00-00            # grid or Optuna sweep
    python -m dsvl_exp.sweep_report SWEEP_DIR --out reports/lr_search

Writes report.md and report.csv (overrides, final metrics, status, wall time, tokens/s, error),
<monitor>_vs_<parameter>.png for each swept parameter and loss_curves.png (every job's train
and eval loss on one chart) into the sweep directory (or --out), and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dsvl_exp.console import run_command
from dsvl_exp.repro.report import to_markdown, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsvl_exp.sweep_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="where to write the files (default: the sweep dir)")
    arguments = parser.parse_args(argv)
    report, written = write_report(arguments.sweep_dir, arguments.out)
    sys.stdout.write(to_markdown(report))
    print("\nwrote: " + ", ".join(str(path) for path in written))
    return 0


def console_main() -> None:
    run_command(main)


if __name__ == "__main__":
    console_main()

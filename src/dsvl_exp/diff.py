"""Compare runs: what differs between them, and whether it can change the numbers.

    python -m dsvl_exp.diff RUN_A RUN_B                       # two run directories (or multirun jobs)
    python -m dsvl_exp.diff MULTIRUN_DIR                      # every job against job 0
    python -m dsvl_exp.diff RUN_A RUN_B --format markdown     # for a pull-request comment; or json
    python -m dsvl_exp.diff RUN_A RUN_B --tolerance 1e-6      # relative tolerance for metrics

The verdict comes first: identical, differs only in volatile fields (paths, hosts, labels), or
differs in meaning; then group choices, overrides, config keys, derived values, code,
environment (changed packages only), hardware, seeds, data fingerprints and outcomes (final
metrics with deltas, the first step where the loss curves part). Exit status: 0 identical in
meaning, 1 differs, 2 error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dsvl_exp.console import EXIT_DIFFERS, EXIT_OK, run_command
from dsvl_exp.repro.compare import DEFAULT_TOLERANCE, DIFFERS, RunError, compare_runs, load_run, multirun_jobs
from dsvl_exp.repro.render import print_rich, to_json, to_markdown


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dsvl_exp.diff", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="two run directories, or one multirun directory")
    parser.add_argument("--format", choices=("rich", "markdown", "json"), default="rich")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="relative tolerance for metrics and loss curves (default %(default)g)")
    return parser.parse_args(argv)


def comparisons_for(paths: list[Path], tolerance: float) -> list:
    if len(paths) == 2:
        return [compare_runs(load_run(paths[0]), load_run(paths[1]), tolerance)]
    if len(paths) == 1:
        jobs = multirun_jobs(paths[0]) if paths[0].is_dir() else []
        if len(jobs) < 2:
            raise RunError(f"{paths[0]}: expected a multirun directory with at least two jobs (subdirectories "
                           "with manifest.json), found {len(jobs)}; to compare two runs pass both directories")
        first = load_run(jobs[0])
        return [compare_runs(first, load_run(job), tolerance) for job in jobs[1:]]
    raise RunError(f"expected two run directories or one multirun directory, got {len(paths)} paths")


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    comparisons = comparisons_for(arguments.runs, arguments.tolerance)
    if arguments.format == "markdown":
        sys.stdout.write(to_markdown(comparisons))
    elif arguments.format == "json":
        sys.stdout.write(to_json(comparisons))
    else:
        print_rich(comparisons)
    return EXIT_DIFFERS if any(c.verdict == DIFFERS for c in comparisons) else EXIT_OK


def console_main() -> None:
    run_command(main)


if __name__ == "__main__":
    console_main()

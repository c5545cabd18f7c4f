"""`--help` of every command: wall time (best of --repeats) and CPU time of a fresh process.

    python scripts/bench_help.py [--repeats 5]

Every command parses its arguments before importing torch / transformers, so `--help` should
answer in well under a second; tests/test_console.py asserts that no heavy module is imported.
Measure on an idle machine: a loaded one inflates the wall times several-fold.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

from bench_common import print_machine_header

COMMANDS = ("train", "chat", "evaluate", "serve", "export", "diff", "reproduce", "sweep_report")


def time_help(command: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) for one `python -m dsvl_exp.<command> --help`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"dsvl_exp.{command}", "--help"], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    print_machine_header()
    print(f"{'command':<14}{'best wall s':>12}{'best cpu s':>12}")
    for command in COMMANDS:
        samples = [time_help(command) for _ in range(repeats)]
        print(f"{command:<14}{min(w for w, _ in samples):>12.2f}{min(c for _, c in samples):>12.2f}")


if __name__ == "__main__":
    main()

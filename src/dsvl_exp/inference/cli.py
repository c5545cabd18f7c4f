"""Command-line pieces shared by chat, evaluate and serve: model and generation flags, JSONL
input files, user errors."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dsvl_exp.errors import UserError

if TYPE_CHECKING:  # inference.generation imports torch: not before the arguments are parsed
    from dsvl_exp.inference.generation import GenerationSettings


class UsageError(UserError, ValueError):
    """A wrong flag or input file named on the command line."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="export folder or run directory")


def jsonl_records(path: Path, error_type: type[Exception]) -> Iterator[tuple[str, object]]:
    """(`file:line`, parsed value) for each non-blank line; a malformed line raises `error_type`
    naming the line and column."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as error:
            raise error_type(f"{where}: malformed JSON ({error.msg} at column {error.colno})") from None


def add_generation_arguments(parser: argparse.ArgumentParser, greedy_default: bool = False) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit in tokens (default 64)")
    group.add_argument("--temperature", type=float, default=0.2, help="sampling temperature; 0 = greedy (default 0.2)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0: off)")
    group.add_argument("--greedy", action="store_true", default=greedy_default,
                       help="always take the most likely token (deterministic)")
    group.add_argument("--seed", type=int, default=0, help="seed for sampling (default 0)")


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    from dsvl_exp.inference.generation import GenerationSettings

    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens={args.max_new_tokens} must be at least 1")
    if args.temperature < 0:
        raise UsageError(f"--temperature={args.temperature} must be >= 0 (0 means greedy)")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p={args.top_p} must be in (0, 1]")
    return GenerationSettings(max_new_tokens=args.max_new_tokens, greedy=args.greedy,
                              temperature=args.temperature, top_p=args.top_p)

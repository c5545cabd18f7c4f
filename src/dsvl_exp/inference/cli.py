"""Command-line pieces shared by chat, evaluate and serve: model and generation flags, JSONL
input files, user errors."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from dsvl_exp.inference.generation import GenerationSettings


class UsageError(ValueError):
    """A wrong flag or input file named on the command line."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="export folder or run directory")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="when MODEL is a checkpoint without export/: read its DeepSpeed pickles unrestricted. "
                             "They can run any code with your account; use only for files you or someone you trust "
                             "wrote (default: weights-only, tensors and DeepSpeed's own types)")


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
        except RecursionError:
            raise error_type(f"{where}: JSON nested too deeply to read (brackets within brackets); fix the line") from None


def add_generation_arguments(parser: argparse.ArgumentParser, greedy_default: bool = False) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit in tokens (default 64)")
    group.add_argument("--temperature", type=float, default=0.2, help="sampling temperature; 0 = greedy (default 0.2)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0: off)")
    group.add_argument("--greedy", action="store_true", default=greedy_default,
                       help="always take the most likely token (deterministic)")
    group.add_argument("--seed", type=int, default=0, help="seed for sampling (default 0)")


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens={args.max_new_tokens} must be at least 1")
    if args.temperature < 0:
        raise UsageError(f"--temperature={args.temperature} must be >= 0 (0 means greedy)")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p={args.top_p} must be in (0, 1]")
    return GenerationSettings(max_new_tokens=args.max_new_tokens, greedy=args.greedy,
                              temperature=args.temperature, top_p=args.top_p)


def run_cli(main: Callable[[], int | None], user_errors: tuple[type[BaseException], ...]) -> None:
    """Run `main`; a user error becomes one message on stderr and exit status 2, no traceback."""
    try:
        code = main()
    except user_errors as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code or 0)


def user_error_types() -> tuple[type[BaseException], ...]:
    from dsvl_exp.data.errors import DataError
    from dsvl_exp.inference.loading import ModelPathError
    from dsvl_exp.inference.session import ChatError
    from dsvl_exp.training.exporting import ExportError
    from dsvl_exp.training.safe_loading import UntrustedCheckpointError

    return (DataError, ModelPathError, ChatError, UsageError, ExportError, UntrustedCheckpointError, FileNotFoundError)

"""The one runner behind every command (`python -m dsvl_exp.<command>` and the `dsvl-*` console
scripts): how a command ends, whatever went wrong.

    exit status 0   done
                1   the command's answer is "no": diff / reproduce found the runs differ
                2   a user error (UserError: bad config, data, flag, missing file): one paragraph
                    `error: ...` on stderr, no traceback
                3   an internal error (a bug): the traceback, and a line asking to report it
              130   interrupted (Ctrl-C)

HYDRA_FULL_ERROR=1 adds the traceback to user errors too. Commands parse their arguments before
they import torch / transformers, so `--help` and a wrong flag answer at once; this module
imports nothing heavy either.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

from dsvl_exp.errors import UserError

EXIT_OK = 0
EXIT_DIFFERS = 1
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3
EXIT_INTERRUPTED = 130


class _HydraFullError:
    """The user's HYDRA_FULL_ERROR while `hydra_errors_raised` sets it for Hydra."""
    forced = False
    user_value: str | None = None


def full_tracebacks() -> bool:
    value = _HydraFullError.user_value if _HydraFullError.forced else os.environ.get("HYDRA_FULL_ERROR")
    return value == "1"


@contextmanager
def hydra_errors_raised() -> Iterator[None]:
    """Hydra prints an error itself and exits 1 unless HYDRA_FULL_ERROR=1, which makes it raise:
    set it for the call, so the error reaches `exit_status` (the user's own setting still decides
    whether tracebacks are shown)."""
    _HydraFullError.user_value, _HydraFullError.forced = os.environ.get("HYDRA_FULL_ERROR"), True
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if _HydraFullError.user_value is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = _HydraFullError.user_value
        _HydraFullError.forced = False


def report_user_error(error: BaseException) -> None:
    """The message alone on stderr, and in the log files that are open (a run's train.log)."""
    if full_tracebacks():
        traceback.print_exception(error, file=sys.stderr)
    print(f"error: {error}", file=sys.stderr, flush=True)
    logger = logging.getLogger("dsvl_exp")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "%s", (error,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def report_internal_error(error: BaseException) -> None:
    traceback.print_exception(error, file=sys.stderr)
    print(f"internal error: {type(error).__name__}: {error}. This is a bug in dsvl_exp, not in your "
          "config or data: please report it with the traceback above", file=sys.stderr, flush=True)


def exit_status(main: Callable[[], int | None]) -> int:
    """Run `main` and turn how it ended into the documented exit status (printing what it must)."""
    try:
        return main() or EXIT_OK
    except UserError as error:
        report_user_error(error)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 (the one place internal errors are reported)
        report_internal_error(error)
        return EXIT_INTERNAL_ERROR


def run_command(main: Callable[[], int | None]) -> NoReturn:
    """What every console script calls: `sys.exit(exit_status(main))`."""
    sys.exit(exit_status(main))

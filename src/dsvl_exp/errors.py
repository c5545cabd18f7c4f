"""Errors the user can fix. The entry point prints their message as one paragraph and exits
non-zero without a traceback (HYDRA_FULL_ERROR=1 shows it); any other exception is an internal
error and keeps its traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad config, bad data, a missing file, incompatible parts. The message names the
    key / file / record and says how to fix it."""


class ConfigError(UserError, ValueError):
    """A config that composed but cannot run (keys that contradict each other, a missing value)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named that is not there; the message says what would create it."""


class BadFileError(UserError, ValueError):
    """A file that is there but cannot be used as given (another kind, a newer format, weights that
    do not fit its config); the message names it."""

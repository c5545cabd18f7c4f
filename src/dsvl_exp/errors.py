"""Errors the user can fix. The entry point prints their message as one paragraph and exits
non-zero without a traceback (HYDRA_FULL_ERROR=1 shows it); any other exception is an internal
error and keeps its traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad config, bad data, a missing file, incompatible parts. The message names the
    key / file / record and says how to fix it."""


class ConfigError(UserError, ValueError):
    """A config that composed but cannot run (keys that contradict each other, a missing value)."""

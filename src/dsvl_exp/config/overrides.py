"""Command-line overrides that Hydra's grammar would otherwise misread.

`zero=3` parses as the integer 3, and Hydra rejects a non-string config-group choice. The
user's `zero=3` and `-m zero=2,3` must work as typed, so numeric choices of such groups are
quoted before Hydra parses them (`zero='3'`, `zero='2','3'`).
"""

from __future__ import annotations

import re

NUMERIC_GROUPS = ("zero",)
_NUMBER_LIST = re.compile(r"^\d+(,\d+)*$")


def quote_numeric_group_choices(arguments: list[str], groups: tuple[str, ...] = NUMERIC_GROUPS) -> list[str]:
    quoted = []
    for argument in arguments:
        key, sep, value = argument.partition("=")
        if sep and key.lstrip("+~") in groups and _NUMBER_LIST.match(value):
            argument = f"{key}=" + ",".join(f"'{v}'" for v in value.split(","))
        quoted.append(argument)
    return quoted


def as_typed(overrides: list[str], groups: tuple[str, ...] = NUMERIC_GROUPS) -> list[str]:
    """The overrides as the user typed them (`zero=3`, not the quoted `zero='3'`), for labels."""
    typed = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key.lstrip("+~") in groups:
            override = f"{key}=" + ",".join(v.strip("'\"") for v in value.split(","))
        typed.append(override)
    return typed


def resume_shorthand(arguments: list[str]) -> list[str]:
    """`resume=auto`, `resume=PATH` and `resume=null` (the public spelling) set
    `resume.checkpoint`: `resume` is a group of two keys (the checkpoint and
    `resume.allow_config_change`), and Hydra cannot assign a string to a group."""
    rewritten = []
    for argument in arguments:
        key, sep, value = argument.partition("=")
        if sep and key.lstrip("+") == "resume":
            argument = f"resume.checkpoint={value}"
        rewritten.append(argument)
    return rewritten

"""How `make test` shares the tests out between its pytest-xdist workers (`-n 2 --dist loadgroup`).

Each worker builds its own module- and session-scoped fixtures, so the tests sharing an expensive
one must run in one worker: every test of a file that defines a module/class/package/session-scoped
fixture (the golden runs, the resume runs, ...) is one work unit, and so are all the files that use
the session's trained model (`trained_run`, 400 steps). Every other test is a unit of its own,
sent to whichever worker is free; the biggest units go first (xdist's default reordering).

Hand-written because xdist's own `loadgroup` marks a test by appending `@group` to its node id,
which pytest 9 no longer lets a plugin change: the marks are kept but every test is scheduled
alone. The file rule reads the source text because the scheduler runs in the controller, which
collects nothing; conftest.py checks it against the fixtures pytest really collected."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from xdist.scheduler import LoadScopeScheduling

SHARED_ACROSS_FILES = "trained_run"
SHARED_WITHIN_FILE = re.compile(r"""scope=["'](module|class|package|session)["']""")


@cache
def file_group(path: Path) -> str | None:
    """The work unit every test of this file belongs to, or None (each test on its own)."""
    text = path.read_text()
    if SHARED_ACROSS_FILES in text:
        return SHARED_ACROSS_FILES
    if SHARED_WITHIN_FILE.search(text):
        return path.name
    return None


def collected_group(items: list) -> str | None:
    """What the fixtures pytest collected for one file's tests require (file_group must agree)."""
    scopes = {name: definitions[-1].scope for item in items
              for name, definitions in item._fixtureinfo.name2fixturedefs.items() if definitions}
    if SHARED_ACROSS_FILES in scopes:
        return SHARED_ACROSS_FILES
    in_this_file = {name for name, scope in scopes.items() if scope in ("module", "class", "package")}
    return items[0].path.name if in_this_file else None


def check_file_groups(items: list) -> list[str]:
    """Files whose tests need one worker (by their collected fixtures) that file_group misses."""
    by_file: dict[Path, list] = {}
    for item in items:
        by_file.setdefault(item.path, []).append(item)
    return [f"{path.name}: its tests share {needed}, but the scheduler's rule gives {file_group(path)}"
            for path, file_items in by_file.items()
            if (needed := collected_group(file_items)) is not None and file_group(path) != needed]


class FixtureSharingScheduling(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:
        group = file_group(self.config.rootpath / nodeid.split("::", 1)[0])
        return nodeid if group is None else group

"""One run at a time in a run directory: an exclusive lock held for the life of the run.

The Hydra task (rank 0's process; the one process that starts the local ranks) takes
`<run dir>/.run.lock` with flock(LOCK_EX | LOCK_NB) before it writes anything there, and holds it
until the run ends. The ranks it starts are its children and need no lock of their own; ranks
started by torchrun / deepspeed follow rank 0, which holds it. The kernel drops a flock when its
process dies (kill -9 included), so a lock is never left behind by a dead run: the file's
content (pid, host, start time) only says who held it last, and a non-empty file found unlocked
is reported as taken over. On NFS, Linux turns flock into a byte-range lock the server sees, so
a second host is kept out too.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from dsvl_exp.errors import UserError

LOCK_FILE = ".run.lock"

log = logging.getLogger(__name__)


class RunDirectoryBusy(UserError):
    """Another live run holds the run directory."""


def holder_description(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']} (started {holder['started_at']}: {holder['command']})"
    except (json.JSONDecodeError, KeyError, TypeError):
        return "another process"


def busy_message(run_dir: Path, holder_text: str) -> str:
    return (f"the run directory {run_dir} is in use by {holder_description(holder_text)}. Wait for that run "
            "to end (or stop it), or start this one in another directory (hydra.run.dir=...)")


def check_not_busy(run_dir: Path) -> None:
    """RunDirectoryBusy when a live run holds `run_dir`'s lock; writes nothing (the start-up checks
    run before anything is written)."""
    path = run_dir / LOCK_FILE
    if not path.is_file():
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunDirectoryBusy(busy_message(run_dir, path.read_text())) from None
    finally:
        os.close(descriptor)  # closing drops the shared lock, if it was taken


@contextmanager
def hold_run_dir(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold `run_dir`'s lock for the `with` block; RunDirectoryBusy when a live run holds it."""
    if not enabled:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirectoryBusy(busy_message(run_dir, path.read_text())) from None
        previous = os.read(descriptor, 4096).decode(errors="replace").strip()
        if previous:
            log.warning("took over the lock of %s: that process is gone (it ended without releasing %s)",
                        holder_description(previous), path)
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv)}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)  # an empty file: released cleanly, nothing to take over
    finally:
        os.close(descriptor)  # closing drops the flock

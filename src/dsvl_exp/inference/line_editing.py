"""Line editing and history for the interactive chat, from the standard library's `readline`
(arrow keys, Ctrl-R search, history across sessions, as in a shell). The history lives under the
user's state directory (`$XDG_STATE_HOME/dsvl_exp/chat_history`, default
`~/.local/state/dsvl_exp/chat_history`), never in a run directory another user may read; it keeps
the last HISTORY_LENGTH lines and is private to the user (mode 0600). Where `readline` is missing
(Windows), input works without editing or history.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)
HISTORY_LENGTH = 1000


def history_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "dsvl_exp" / "chat_history"


@contextmanager
def line_history(path: Path | None = None) -> Iterator[Path | None]:
    """Loads the history on entry and saves it on exit; yields its path (None without readline)."""
    try:
        import readline
    except ImportError:
        yield None
        return
    path = history_path() if path is None else path
    readline.clear_history()
    try:
        readline.read_history_file(path)
    except (FileNotFoundError, OSError):
        pass  # first session, or an unreadable file: start with none
    readline.set_history_length(HISTORY_LENGTH)
    try:
        yield path
    finally:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            readline.write_history_file(path)
            os.chmod(path, 0o600)
        except OSError as error:  # history is a convenience: never lose the answer over it
            log.warning("could not save the chat history to %s: %s", path, error)

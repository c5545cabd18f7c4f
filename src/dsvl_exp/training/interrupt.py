"""SIGTERM / SIGINT (SLURM pre-emption, Ctrl-C, the launcher forwarding either): finish the step,
save a checkpoint, exit cleanly. The handler only sets a flag; the loop acts on it at the next
step boundary, and all ranks agree on that step so their collectives stay matched."""

from __future__ import annotations

import signal
import threading

from dsvl_exp.training import distributed

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    def __init__(self):
        self.signal_name: str | None = None
        self.previous: dict = {}

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for sig in STOP_SIGNALS:
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame) -> None:
        # Repeats are ignored: Ctrl-C reaches a rank both from the terminal and from the
        # launcher forwarding it, and a second one must not abort the save. SIGKILL still works.
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    def agreed(self) -> bool:
        """True on every rank when any rank was signalled (a scalar all-reduce; the training loop
        instead folds this rank's flag into its one per-step read)."""
        requested = 1.0 if self.signal_name else 0.0
        if distributed.world_size() > 1:
            requested = distributed.all_reduce_sum([requested])[0]
        return requested > 0

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

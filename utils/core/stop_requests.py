"""Stopping cleanly on SIGTERM / SIGINT: what preemptible machines and schedulers send.

Inside `stop_requests()` the first SIGTERM or SIGINT only sets a flag; the long-running loop
(training steps, preprocessing chunks) checks it at a safe point, saves where it is, and the
CLI exits with STOPPED_EXIT_CODE. A second Ctrl-C raises KeyboardInterrupt at once, for a
user who does not want to wait for the safe point.
"""
from __future__ import annotations

import contextlib
import signal
import threading

from utils.core.errors import IcyfaceError

# EX_TEMPFAIL from sysexits.h: "temporary failure, the user is invited to retry". Schedulers
# can requeue on it; the same command resumes where the stopped one left off.
STOPPED_EXIT_CODE = 75


class StopRequested(IcyfaceError):
    """A SIGTERM/SIGINT was honoured at a safe point; the message says how to resume."""

    exit_code = STOPPED_EXIT_CODE


def stopped_message(err: StopRequested) -> str:
    """The one line a CLI prints for a honoured stop before exiting with STOPPED_EXIT_CODE."""
    return f"{err}; rerun the same command to resume (exit {STOPPED_EXIT_CODE})"


class StopFlag:
    def __init__(self):
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


@contextlib.contextmanager
def stop_requests():
    """Yields a StopFlag whose `requested` turns true on the first SIGTERM or SIGINT. Outside the
    main thread (where Python cannot install handlers) the flag never turns and the signals keep
    their usual effect."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handle(signum, _frame):
        if flag.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the save
        if not flag.requested:
            flag.signal_name = signal.Signals(signum).name
            print(f"\n{flag.signal_name} received: stopping at the next safe point (a second Ctrl-C stops at "
                  f"once, without saving)", flush=True)

    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

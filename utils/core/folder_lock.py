"""One writer per folder: an OS lock held for as long as a process works in a folder.

The lock is flock() on <folder>/.icyface-lock. The kernel releases it when the process ends,
however it ends (kill -9 included), so a stopped run never leaves a stale lock behind; the file
itself stays, holding the last holder's PID and host, which a refused process names.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from utils.core.errors import IcyfaceError

LOCK_NAME = ".icyface-lock"


class FolderBusyError(IcyfaceError):
    """Another process holds the folder; the message names it."""


@contextlib.contextmanager
def hold_folder(folder: Path, lock_name: str = LOCK_NAME):
    """Hold `folder` (which must exist) until the block ends; FolderBusyError at once when another
    process holds it. Nothing in the folder is written unless the lock is taken."""
    path = Path(folder) / lock_name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "another process"
            raise FolderBusyError(f"{folder} is in use by {holder}; wait for it to finish (or stop it) and "
                                  f"rerun") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock

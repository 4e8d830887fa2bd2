"""One live run per output folder: a lock that the operating system releases when its run ends, however it ends.

``rsrs run`` holds an exclusive ``flock`` on ``<dir>/.rsrs.lock`` from the moment it claims the folder until it
returns. A second run into the same folder finds the lock taken and stops with one line naming the holder (the file
holds the holder's pid, host and start time, for that line only); ``--overwrite`` clears outputs only once the lock
is held, so it never deletes a live run's outputs. The kernel drops the lock when the holding process exits, even
on SIGKILL, so a crashed run never leaves the folder locked. (On NFS, Linux maps ``flock`` to POSIX locks, which
the server releases when the client's process dies.)

The lock file itself stays: deleting it on exit would let a waiting run lock a file that no longer has a name while
a third run locks a new one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rsrs.core.errors import RsrsError
from rsrs.core.files import output_error

LOCK = ".rsrs.lock"


class RunFolderBusyError(RsrsError, BlockingIOError):
    """Another live ``rsrs run`` holds the output folder."""


@contextmanager
def hold_run_folder(out: Path) -> Iterator[None]:
    """Hold ``out``'s run lock for the block (creating ``out``); :class:`RunFolderBusyError` if a live run has it."""
    path = out / LOCK
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise output_error(path, err) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusyError(
                f"{out} is in use by another rsrs run ({_holder(fd)}); wait for it to finish, or set another "
                "output.dir (or --output-dir)"
            ) from None
        _record_holder(fd)
        yield
    finally:
        os.close(fd)  # releases the lock


def _record_holder(fd: int) -> None:
    """Write who holds the lock (best effort: a full disk must not stop a run here; it fails on its outputs)."""
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
    except OSError:
        pass


def _holder(fd: int) -> str:
    """Who holds the lock, as the holder recorded it."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its pid is not recorded"

"""Stopping a command from outside: SIGTERM (a batch system's cancel, ``kill``, a container's stop) is handled as
Ctrl-C is, so both stop the run the same way: temporary files removed, the local cluster shut down, finished
tiles kept for a rerun. Only the exit code and the line differ (143 and 130, as shells report them).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A :class:`KeyboardInterrupt`, so every path that stops on Ctrl-C stops on it too."""


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (once: a second SIGTERM while
    shutting down is ignored, so cleanup finishes; SIGKILL still ends the process). No-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

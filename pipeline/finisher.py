"""The pool that finishes predicted tiles (Zarr chunk, polygons, done-marker) beside the model.

On a GPU the finisher is a pool of processes: polygonising and Zarr writes hold the GIL, and in the model's
process they would delay every kernel launch. On a CPU, or where this process may not have children (Dask's
worker processes are daemons unless ``distributed.worker.daemon`` is False, which ``rsrs run``'s own clusters
set), tiles are finished in threads.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Literal

#: Threads per task for parallel reads and tile finishing (GDAL releases the GIL while it decodes).
IO_THREADS = min(8, os.cpu_count() or 1)

FinisherKind = Literal["threads", "processes"]


def finisher_kind(device_type: str) -> FinisherKind:
    """Processes beside a GPU model when this process may start them, else threads."""
    if device_type != "cuda" or multiprocessing.current_process().daemon:
        return "threads"
    return "processes"


def start_finisher(kind: FinisherKind, *, gpus: int = 1) -> Executor:
    """A started pool of ``kind``; a process pool is warmed (all processes up, imports done) before it returns."""
    if kind == "threads":
        return ThreadPoolExecutor(IO_THREADS, "rsrs-finish")
    n = max(1, min(8, (os.cpu_count() or 2) // (2 * max(1, gpus))))
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with_parent,
                               initargs=(os.getpid(),))  # fmt: skip
    list(pool.map(_warm_finisher, [0.5] * n))  # start all n now (imports included), not in the first tiles
    return pool


def _warm_finisher(seconds: float) -> None:
    """A no-op task, long enough that each finisher process gets one (unpickling it imports this module)."""
    time.sleep(seconds)


def _exit_with_parent(parent: int) -> None:
    """In a finisher process: exit when the worker that started it is gone (e.g. killed), never linger."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="rsrs-parent-watch", daemon=True).start()

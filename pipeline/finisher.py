"""The pool that finishes predicted tiles (Zarr chunk, polygons, done-marker) beside the model.

On a GPU the finisher is a pool of processes: polygonising and Zarr writes hold the GIL, and in the model's
process they would delay every kernel launch. A tile's codes reach a finisher process through a block of shared
memory, reused from tile to tile, not pickled through the pool's pipe: handing over a batch of 16 tiles of 5 x 960²
codes cost the worker's process 131 ms of CPU that way against 14 ms now (benchmarks/results/finish_handoff.json,
2-core CPU), time taken from its reads and launches. Where ``/dev/shm`` has too little room (a container's
default is 64 MB), codes go through the pipe. Should the worker be killed, Python's resource tracker frees its blocks.

On a CPU, or where this process may not have children (Dask's worker processes are daemons unless
``distributed.worker.daemon`` is False, which ``rsrs run``'s own clusters set), tiles are finished in threads.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing.shared_memory import SharedMemory
from typing import Literal, TypeVar

import numpy as np

#: Threads per task for parallel reads and tile finishing (GDAL releases the GIL while it decodes).
IO_THREADS = min(8, os.cpu_count() or 1)

#: Where shared memory lives (POSIX): a tile's codes go through it only if twice their size is free there.
SHARED_MEMORY = "/dev/shm"
#: Shared memory a process finisher keeps for reuse once its tiles are done (a batch of 16 tiles x 5 queries: 74 MB).
MAX_FREE_BYTES = 256 * 2**20

FinisherKind = Literal["threads", "processes"]
T = TypeVar("T")

log = logging.getLogger(__name__)


def finisher_kind(device_type: str) -> FinisherKind:
    """Processes beside a GPU model when this process may start them, else threads."""
    if device_type != "cuda" or multiprocessing.current_process().daemon:
        return "threads"
    return "processes"


class Finisher:
    """A started pool of ``kind`` that finishes tiles: ``submit(fn, *args, codes=codes)`` runs ``fn(*args, codes)``.

    A process pool is warmed (all processes up, ``preload``'s modules imported: what ``fn`` needs) before the
    constructor returns, so the first tiles do not wait for imports. Its shared blocks are reused from tile to tile
    (up to :data:`MAX_FREE_BYTES` kept free): faulting in a fresh block's pages cost the worker 8x the copy into a
    used one.
    """

    def __init__(
        self, kind: FinisherKind, *, gpus: int = 1, shared: bool = True, preload: tuple[str, ...] = ()
    ) -> None:
        self.kind = kind
        self.shared = shared and kind == "processes"  # codes cross in shared memory (else pickled through a pipe)
        self._lock = threading.Lock()
        self._free: dict[int, list[SharedMemory]] = {}  # by size in bytes: blocks no tile uses now
        self._warned = False  # that shared memory had no room
        if kind == "threads":
            self._pool: ThreadPoolExecutor | ProcessPoolExecutor = ThreadPoolExecutor(IO_THREADS, "rsrs-finish")
            return
        n = max(1, min(8, (os.cpu_count() or 2) // (2 * max(1, gpus))))
        self._pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_process, initargs=(os.getpid(), preload))  # fmt: skip
        list(self._pool.map(_warm_finisher, [0.5] * n))  # start all n now (imports included), not in the first tiles

    def submit(self, fn: Callable[..., T], *args: object, codes: np.ndarray | None) -> Future[T]:
        """Run ``fn(*args, codes)`` in the pool; in processes, ``codes`` is copied once, into shared memory."""
        block = self._block(codes.nbytes) if self.shared and codes is not None else None
        if block is None:
            return self._pool.submit(fn, *args, codes)
        np.ndarray(codes.shape, codes.dtype, buffer=block.buf)[...] = codes
        running = self._pool.submit(_with_shared_codes, fn, args, block.name, codes.shape, codes.dtype.str)
        done: Future[T] = Future()

        def finished(running: Future[T]) -> None:  # the block is free before the caller hears the tile is done
            self._give_back(block)  # also when the pool broke
            if running.cancelled():
                done.cancel()
            elif running.exception() is None:
                done.set_result(running.result())
            else:
                done.set_exception(running.exception())

        running.add_done_callback(finished)
        return done

    def _block(self, nbytes: int) -> SharedMemory | None:
        """A shared block of ``nbytes``: a free one, else a new one, else None (nothing to share, or no room)."""
        if not nbytes:
            return None
        with self._lock:
            if self._free.get(nbytes):
                return self._free[nbytes].pop()
        if _room_for(nbytes):
            return SharedMemory(create=True, size=nbytes)
        if not self._warned:  # said once: a container's small /dev/shm slows every tile's hand-over
            self._warned = True
            log.warning("%s has too little room for tiles' codes; finishing tiles gets them through a pipe, which "
                        "costs this worker's CPU (in a container, give it more shared memory, e.g. --shm-size 1g)",
                        SHARED_MEMORY)  # fmt: skip
        return None

    def _give_back(self, block: SharedMemory) -> None:
        """Keep a block its tile is done with for the next tile, or free it when enough are kept."""
        with self._lock:
            if sum(b.size for blocks in self._free.values() for b in blocks) + block.size <= MAX_FREE_BYTES:
                self._free.setdefault(block.size, []).append(block)
                return
        _release(block)

    def shutdown(self) -> None:
        """Wait for the tiles submitted, stop the pool and free its shared blocks."""
        self._pool.shutdown()
        with self._lock:
            for block in (b for blocks in self._free.values() for b in blocks):
                _release(block)
            self._free.clear()


def _room_for(nbytes: int) -> bool:
    """Whether shared memory has room for ``nbytes`` with as much to spare (writing past a full tmpfs kills)."""
    try:
        stats = os.statvfs(SHARED_MEMORY)
    except (OSError, AttributeError):  # no such folder; no statvfs (Windows)
        return False
    return stats.f_bavail * stats.f_frsize >= 2 * nbytes


def _with_shared_codes(fn: Callable[..., T], args: tuple, name: str, shape: tuple[int, ...], dtype: str) -> T:
    """In a finisher process: ``fn(*args, codes)`` with the codes read in place from the shared block ``name``."""
    block = SharedMemory(name=name)
    try:
        return fn(*args, np.ndarray(shape, dtype, buffer=block.buf))
    finally:
        block.close()


def _release(block: SharedMemory) -> None:
    """Free a tile's shared block once its finisher is done with it."""
    block.close()
    block.unlink()


def _warm_finisher(seconds: float) -> None:
    """A no-op task, long enough that each finisher process gets one (unpickling it imports this module)."""
    time.sleep(seconds)


def _start_process(parent: int, preload: tuple[str, ...]) -> None:
    """In a new finisher process: import ``preload`` and watch the worker that started it."""
    for module in preload:
        importlib.import_module(module)
    _exit_with_parent(parent)


def _exit_with_parent(parent: int) -> None:
    """In a finisher process: exit when the worker that started it is gone (e.g. killed), never linger."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="rsrs-parent-watch", daemon=True).start()

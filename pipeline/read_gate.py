"""Reads that take turns while the GPU waits for them.

A run starts all the tasks sharing a GPU at once, and each first reads a group of tiles. Decoding is bound by the
CPU, so reads that run together share the cores and every first group is ready late: on an H200 machine's 16 cores
(``benchmarks/results/reads_at_once.json``) four tasks' first groups took 0.25-0.30 s read together, against
0.11-0.14 s for one read alone. So while the GPU has nothing queued, a worker's reads go one at a time and the next
batch comes soonest. Once a batch is queued, reads overlap again: read one at a time they finish about 12% later
in all, which while the GPU computes would only cost throughput. In `rsrs run` (rsrefseg-b, 16384², 4 tasks, one
run each) the GPU's wait for its first batch fell from 0.86 to 0.33 s, and the run from 84.3 to 103.4 tiles/s.
Reads over a network wait on it, not on the CPU, and are not gated (:meth:`ResidentModel.read_turn`).

Reads also give the CPU way to the threads that queue batches: a GPU worker's reading threads run at a lower
priority (:data:`READ_NICENESS`, Linux's per-thread nice value), and still take every core the others leave idle.
Decoding keeps every core busy, and in that run a task whose read had ended reached the model's turn 0.1-0.34 s
later while other reads ran. With the reads 10 lower (one run each, the same session): 112.0 against 106.5
tiles/s, the GPU idle between batches 0.16 against 0.26 s (``run_gpu_rsrefseg-b_default_nice*.json``). The first
batches still reach their turn 0.1-0.26 s after their reads, yet queueing a batch beside three tasks' reads takes
7 ms (``benchmarks/queue_latency.py``): what holds them back is outside the queueing's own work (the benchmark
timeline now records when each task resumes after its read, and stalls of the whole worker).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: How often a read that waits for its turn asks whether the GPU still waits for work (seconds).
POLL_S = 0.005

#: How much lower than the worker's own threads a GPU worker's reading threads run (added to their nice value; the
#: decoding threads GDAL starts when a reading thread first needs them inherit it).
READ_NICENESS = 10


def lower_this_threads_priority(by: int) -> None:
    """Add ``by`` to the calling thread's nice value, on Linux (where nice is per thread); elsewhere nothing.

    Raising one's own nice value needs no privilege; it cannot be lowered again, so call it only in threads that
    do nothing but read (they end with their reader).
    """
    if by and sys.platform.startswith("linux"):
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + by)


class ReadGate:
    """Lets one read at a time through while ``starved()`` says the device has nothing queued, all reads otherwise."""

    def __init__(self, starved: Callable[[], bool]) -> None:
        self._starved = starved
        self._alone = threading.Lock()  # held by the read that runs alone

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Wait while the device starves and another read runs alone; then read (alone if it still starves)."""
        while self._starved():
            if self._alone.acquire(timeout=POLL_S):
                try:
                    yield
                finally:
                    self._alone.release()
                return
        yield

"""Reads take turns while the GPU waits for a batch, and overlap once it has one; reading threads can give way to
the others (rsrs.pipeline.read_gate)."""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rsrs.pipeline.read_gate import ReadGate, lower_this_threads_priority

WAIT_S = 5.0  # generous: a failing test waits this long, a passing one much less


def _most_reads_at_once(gate: ReadGate, reads: int) -> int:
    """Run ``reads`` reads of 50 ms each through ``gate`` from as many threads; the most that ran at the same time."""
    running, most, lock = 0, 0, threading.Lock()

    def read(_: int) -> None:
        nonlocal running, most
        with gate.turn():
            with lock:
                running += 1
                most = max(most, running)
            time.sleep(0.05)
            with lock:
                running -= 1

    with ThreadPoolExecutor(reads) as pool:
        list(pool.map(read, range(reads)))
    return most


def test_reads_run_one_at_a_time_while_the_device_starves():
    assert _most_reads_at_once(ReadGate(lambda: True), reads=4) == 1


def test_reads_run_together_while_the_device_has_work():
    assert _most_reads_at_once(ReadGate(lambda: False), reads=4) == 4


def test_a_waiting_read_starts_as_soon_as_the_device_gets_work_not_when_the_read_alone_ends():
    starved = threading.Event()
    starved.set()
    gate = ReadGate(starved.is_set)
    alone_started, alone_may_end, second_started = threading.Event(), threading.Event(), threading.Event()

    def alone() -> None:
        with gate.turn():
            alone_started.set()
            assert alone_may_end.wait(WAIT_S)

    def second() -> None:
        with gate.turn():
            second_started.set()

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(alone)
        assert alone_started.wait(WAIT_S)
        waiting = pool.submit(second)
        assert not second_started.wait(0.1)  # the device starves: the second read waits for the first
        starved.clear()  # a batch was queued
        assert second_started.wait(WAIT_S)  # it goes on while the first still reads
        assert not first.done()
        alone_may_end.set()
        first.result(), waiting.result()


def thread_niceness() -> int:
    """The calling thread's nice value (Linux: per thread)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice is per thread on Linux only")
def test_lowering_a_threads_priority_leaves_the_other_threads_as_they_were():
    before = thread_niceness()
    with ThreadPoolExecutor(1) as pool:
        lowered = pool.submit(lambda: (lower_this_threads_priority(3), thread_niceness())[1]).result()
    assert lowered == min(19, before + 3)
    assert thread_niceness() == before

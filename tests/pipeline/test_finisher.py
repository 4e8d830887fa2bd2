import mmap
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from rsrs.pipeline import finisher
from rsrs.pipeline.finisher import Finisher


def _sum_and_shared(scale: int, codes: np.ndarray) -> tuple[int, bool]:
    """In a finisher: what it saw of the codes, and whether it read them in a shared block (not unpickled)."""
    return int(codes.sum()) * scale, isinstance(codes.base, mmap.mmap)


def _imported(module: str, codes: np.ndarray | None) -> bool:
    """In a finisher process: whether ``module`` was imported before this tile."""
    return module in sys.modules


def _shared_blocks() -> set[str]:
    """Python's shared memory blocks (the pool's semaphores live there too)."""
    return {name for name in os.listdir(finisher.SHARED_MEMORY) if name.startswith("psm_")}


def _codes(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (5, 40, 30), dtype=np.uint8)


def test_a_process_finisher_reads_codes_in_place_from_shared_memory_reuses_and_frees_every_block():
    before = _shared_blocks()
    pool = Finisher("processes", gpus=max(1, (os.cpu_count() or 2) // 2))  # one process is enough here
    try:
        views = [_codes(seed)[:, 5:35, 2:28] for seed in range(6)]  # a tile's core: a view into the batch
        got = [pool.submit(_sum_and_shared, 2, codes=v).result() for v in views]  # one tile after the other
        assert len(_shared_blocks() - before) == 1  # each tile reused the block the one before it was done with
    finally:
        pool.shutdown()
    assert got == [(2 * int(v.sum()), True) for v in views]  # read in place, not unpickled
    assert _shared_blocks() == before  # the pool's blocks are freed with it


def test_without_room_in_shared_memory_a_process_finisher_sends_codes_through_its_pipe_and_says_so_once(
    monkeypatch, caplog
):
    monkeypatch.setattr(finisher, "SHARED_MEMORY", "/no/such/shared/memory")
    pool = Finisher("processes", gpus=max(1, (os.cpu_count() or 2) // 2))
    try:
        for seed in range(3):
            codes = _codes(seed)
            assert pool.submit(_sum_and_shared, 1, codes=codes).result() == (int(codes.sum()), False)
    finally:
        pool.shutdown()
    said = [r.getMessage() for r in caplog.records if r.name == "rsrs.pipeline.finisher"]
    assert len(said) == 1 and said[0].startswith("/no/such/shared/memory has too little room for tiles' codes")


WORKER = """
import sys, time
import numpy as np
from rsrs.pipeline.finisher import Finisher
from tests.pipeline.test_finisher import _shared_blocks, _sleep_on

before = _shared_blocks()
pool = Finisher("processes", gpus=64)  # one process
for _ in range(3):
    pool.submit(_sleep_on, 60, codes=np.ones((5, 40, 30), np.uint8))
print(",".join(sorted(_shared_blocks() - before)), flush=True)
time.sleep(60)
"""


def _sleep_on(seconds: float, codes: np.ndarray) -> None:
    """A tile that takes long to finish."""
    time.sleep(seconds)


def test_a_killed_workers_shared_blocks_are_freed_and_its_finisher_processes_exit():
    worker = subprocess.Popen([sys.executable, "-c", WORKER], stdout=subprocess.PIPE, text=True)
    blocks = set(worker.stdout.readline().strip().split(","))
    assert len(blocks) == 3 and blocks <= _shared_blocks()  # the tiles' codes, in shared memory
    worker.kill()  # as an out-of-memory kill would
    worker.wait()
    deadline = time.monotonic() + 20
    while blocks & _shared_blocks() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not blocks & _shared_blocks()  # freed by the worker's resource tracker once its finisher exited


@pytest.mark.parametrize("preload", [(), ("rsrs.pipeline.tasks",)])
def test_a_process_finisher_imports_what_its_tiles_need_as_it_starts(preload):
    pool = Finisher("processes", gpus=64, preload=preload)  # one process
    try:
        assert pool.submit(_imported, "rsrs.pipeline.tasks", codes=None).result() == bool(preload)
    finally:
        pool.shutdown()

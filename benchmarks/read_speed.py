"""Reading a task's tiles: fresh GDAL handles for each tile against the task's :class:`SceneReader`.

Tiles' reads overlap by their context, and a window rarely starts on a block edge, so reading each tile from a
fresh handle decodes many blocks two or three times. A task's ``SceneReader`` keeps one handle per thread open for
the task and gives each thread a band of columns, so a tile's left and upper neighbours have decoded its shared
blocks already (GDAL's block cache). In a worker, the reads also compete for the GIL with the threads that feed the
model. This reads every tile of a synthetic scene (tiled, deflate, 512-pixel blocks, as ``benchmarks.run_rss``
writes it) in the workers' tasks and batches, with the workers' thread count, both ways, alone and beside a busy
Python thread, and checks the two give equal pixels. ``--reader-threads`` sets the ``SceneReader``'s threads and
``--tasks-at-once`` how many tasks read at the same time (two tasks share a GPU worker); GDAL's decoding threads
come from ``GDAL_NUM_THREADS`` in the environment (default: the cores), so a sweep runs one process per setting.

Run from the repository root:  python -m benchmarks.read_speed [--size 8192] [--tile-size 1024] [--batch 16]
                               [--reader-threads 8] [--tasks-at-once 2]
Sweep, e.g.:  for g in 1 4 16; do for r in 2 8; do GDAL_NUM_THREADS=$g python -m benchmarks.read_speed
              --reader-threads $r --tasks-at-once 2 --name read_speed_g${g}_r$r; done; done
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio

from benchmarks._common import busy_python_thread, write_result
from benchmarks.run_rss import write_scene
from rsrs.pipeline.finisher import IO_THREADS
from rsrs.pipeline.reading import SceneReader, read_tile
from rsrs.pipeline.scenes import GDAL_ENV, Scene, scene_from_raster
from rsrs.pipeline.tiling import Tile, batched, plan_tiles
from rsrs.workflows.run_plan import BATCHES_PER_TASK

Batches = list[tuple[Tile, ...]]  # one task's batches
Reader = Callable[[Scene, Batches], Iterator[tuple[np.ndarray, np.ndarray]]]


def per_tile(scene: Scene, task: Batches) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each tile from fresh handles, a batch's tiles in parallel (how workers read before runs)."""
    with ThreadPoolExecutor(IO_THREADS) as io:
        for tiles in task:
            reads = list(io.map(lambda t: read_tile(scene, t.read), tiles))
            yield np.stack([r[0] for r in reads]), np.stack([r[1] for r in reads])


def scene_reader(scene: Scene, task: Batches, *, threads: int = IO_THREADS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The task's batches through one :class:`SceneReader` of ``threads`` threads (how workers read now)."""
    with SceneReader(scene, threads=threads) as reader:
        for tiles in task:
            yield reader.read([t.read for t in tiles])


def reading_machine() -> dict:
    """The CPU and GDAL that decode the tiles, and GDAL's decoding threads."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gdal": rasterio.__gdal_version__,
        "gdal_num_threads": GDAL_ENV["GDAL_NUM_THREADS"],
    }


def ms_per_tile(read: Reader, scene: Scene, tasks: list[Batches], *, at_once: int = 1) -> tuple[float, float]:
    """Wall and CPU (all threads of this process) milliseconds per tile to read ``tasks``, ``at_once`` at a time."""
    for _ in read(scene, tasks[0]):  # warm: imports, GDAL drivers
        pass

    def read_all(task: Batches) -> None:
        for _ in read(scene, task):
            pass

    wall, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(at_once, "task") as running:
        list(running.map(read_all, tasks))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tiles = sum(len(batch) for task in tasks for batch in task)
    return round(wall * 1000 / tiles, 2), round(cpu * 1000 / tiles, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="tiles per model batch (one read group)")
    parser.add_argument("--reader-threads", type=int, default=IO_THREADS, help="threads of each task's SceneReader")
    parser.add_argument("--tasks-at-once", type=int, default=1, help="tasks reading at the same time")
    parser.add_argument("--name", default="read_speed", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    result: dict = {
        **reading_machine(),
        "io_threads": IO_THREADS,
        "reader_threads": args.reader_threads,
        "tasks_at_once": args.tasks_at_once,
        "scene_px": args.size,
        "tile_size": args.tile_size,
        "overlap": args.overlap,
        "batch": args.batch,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.tif"
        write_scene(path, args.size)
        scene = scene_from_raster(str(path))
        tiles = list(plan_tiles(scene.grid, tile_size=args.tile_size, overlap=args.overlap))
        tasks = [batched(list(t), args.batch) for t in batched(tiles, args.batch * BATCHES_PER_TASK)]
        result["tiles"], result["tasks"] = len(tiles), len(tasks)
        a, b = (list(read(scene, tasks[0])) for read in (per_tile, scene_reader))
        pairs = [(x, y) for p, q in zip(a, b, strict=True) for x, y in zip(p, q, strict=True)]  # rgb, valid
        result["equal_pixels"] = all(np.array_equal(x, y) for x, y in pairs)
        readers = {"per_tile": per_tile, "scene_reader": functools.partial(scene_reader, threads=args.reader_threads)}
        for name, read in readers.items():
            result[f"{name}_ms_per_tile"], result[f"{name}_cpu_ms_per_tile"] = ms_per_tile(
                read, scene, tasks, at_once=args.tasks_at_once
            )
        with busy_python_thread(args.tile_size):  # its own CPU time is counted too: compare wall times here
            for name, read in readers.items():
                result[f"{name}_beside_busy_thread_ms_per_tile"] = ms_per_tile(
                    read, scene, tasks, at_once=args.tasks_at_once
                )[0]
    result["speedup"] = round(result["per_tile_ms_per_tile"] / result["scene_reader_ms_per_tile"], 2)
    result["speedup_beside_busy_thread"] = round(
        result["per_tile_beside_busy_thread_ms_per_tile"] / result["scene_reader_beside_busy_thread_ms_per_tile"], 2
    )
    write_result(args.name, result)


if __name__ == "__main__":
    main()

"""How soon a GPU worker's tasks have their tile groups read, when their reads run all at once or a few at a time.

A run starts ``--tasks`` tasks on a GPU together, and each reads its first group of tiles before the GPU has any
work: with decoding bound by the CPU, reads that run at the same time share the cores, so the first group is ready
only when about all of them are. This reads the synthetic scene of ``benchmarks.run_rss`` as a worker's tasks do
(each task its groups in turn through its own :class:`~rsrs.pipeline.reading.SceneReader`), with at most ``k``
reads of the worker running at once (a semaphore), for each ``k`` of ``--at-once``: when the first group was ready,
when every task had its first, the mean time a read took from asking to done, and the wall time of all reads.

Run from the repository root:  python -m benchmarks.reads_at_once [--size 16384] [--tasks 4] [--at-once 1,2,4]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks._common import device_info, write_result
from benchmarks.read_speed import reading_machine
from benchmarks.run_rss import write_scene
from rsrs.pipeline.finisher import IO_THREADS
from rsrs.pipeline.reading import SceneReader
from rsrs.pipeline.scenes import Scene, scene_from_raster
from rsrs.pipeline.tiling import Tile, batched, plan_tiles
from rsrs.workflows.run_plan import BATCHES_PER_TASK


def read_tasks(scene: Scene, tasks: list[list[tuple[Tile, ...]]], at_once: int) -> dict[str, float]:
    """Read every task's groups, tasks in parallel, at most ``at_once`` group reads at a time; seconds."""
    gate = threading.Semaphore(at_once)
    start = time.perf_counter()
    ready: list[list[float]] = [[] for _ in tasks]  # when each task's groups were read, from the start
    waits: list[float] = []  # each read, from asking to done

    def run(t: int) -> None:
        with SceneReader(scene, threads=IO_THREADS) as reader:
            for group in tasks[t]:
                asked = time.perf_counter()
                with gate:
                    reader.read([tile.read for tile in group])
                done = time.perf_counter()
                ready[t].append(done - start)
                waits.append(done - asked)

    with ThreadPoolExecutor(len(tasks), "task") as pool:
        list(pool.map(run, range(len(tasks))))
    return {
        "first_group_ready_s": round(min(r[0] for r in ready), 3),
        "every_first_group_ready_s": round(max(r[0] for r in ready), 3),
        "read_s_mean": round(sum(waits) / len(waits), 3),
        "all_reads_s": round(max(r[-1] for r in ready), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16, help="tiles per group (one model batch)")
    parser.add_argument("--tasks", type=int, default=4, help="tasks reading at the same time (tasks_per_gpu)")
    parser.add_argument("--at-once", default="1,2,4", help="reads allowed at once, each measured")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting (all are reported)")
    parser.add_argument("--name", default="reads_at_once", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    result: dict = {
        **device_info(),  # the machine's GPU, if any: the CPU a GPU worker reads with
        **reading_machine(),
        "reader_threads": IO_THREADS,
        "scene_px": args.size,
        "tile_size": args.tile_size,
        "batch": args.batch,
        "tasks": args.tasks,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.tif"
        write_scene(path, args.size)
        scene = scene_from_raster(str(path))
        tiles = list(plan_tiles(scene.grid, tile_size=args.tile_size, overlap=64))
        groups = batched(tiles, args.batch)
        if len(groups) < args.tasks * BATCHES_PER_TASK:
            parser.error(f"a {args.size}² scene has {len(groups)} groups, fewer than --tasks x {BATCHES_PER_TASK}")
        tasks = [groups[t * BATCHES_PER_TASK : (t + 1) * BATCHES_PER_TASK] for t in range(args.tasks)]
        read_tasks(scene, tasks[:1], 1)  # warm: imports, GDAL drivers, the file in the page cache
        for k in (int(k) for k in args.at_once.split(",")):
            result[f"at_once_{k}"] = [read_tasks(scene, tasks, k) for _ in range(args.repeats)]
    write_result(args.name, result)


if __name__ == "__main__":
    main()

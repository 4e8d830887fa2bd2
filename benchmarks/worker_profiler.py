"""What Dask's statistical profiler costs a worker whose task threads mostly wait, as a GPU worker's do.

Every ``distributed.worker.profile.interval`` (10 ms) a worker's event loop walks the stack of each thread running a
task and merges it into its profile, holding the GIL meanwhile, so reads, launches and queueing wait. This starts a
real LocalCluster worker with ``--tasks`` task threads, each reading groups of tiles of the synthetic scene of
``benchmarks.run_rss`` through a :class:`~rsrs.pipeline.reading.SceneReader` for ``--seconds`` and waiting on each
read from another thread (as `rsrs run`'s tasks do), once with the profiler and once without. Each reports the
groups read, the stack walks' wall time (count, total, the longest, and those over 5 ms with when, from the first)
and the worker's stalls, both recorded by :mod:`benchmarks.run_timeline`'s instrument.

Run from the repository root:  python -m benchmarks.worker_profiler [--tasks 4] [--seconds 8] [--name ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
from distributed import Client, LocalCluster

from benchmarks._common import device_info, write_result
from benchmarks.read_speed import reading_machine
from benchmarks.run_rss import write_scene
from benchmarks.run_timeline import Event, instrument, recorded


def figures(events: list[Event]) -> dict:
    """The profiler's stack walks (count, total, median, longest, those over 5 ms with when, from the first) and the
    stall probe's stalls, from a worker's recorded events."""
    walks = sorted((e for e in events if e[0] == "profile"), key=lambda e: e[2])
    seconds = sorted(e[3] - e[2] for e in walks)
    stalls = [e[3] - e[2] for e in events if e[0] == "stall"]
    first = walks[0][2] if walks else 0.0
    return {
        "stack_walks": len(seconds),
        "stack_walks_ms_total": round(1000 * sum(seconds), 1),
        "stack_walk_ms_median": round(1000 * seconds[len(seconds) // 2], 3) if seconds else None,
        "stack_walk_ms_max": round(1000 * seconds[-1], 2) if seconds else None,
        "stack_walks_over_5_ms": [
            (round(e[2] - first, 2), round(1000 * (e[3] - e[2]), 1)) for e in walks if e[3] - e[2] > 0.005
        ],
        "stalls": len(stalls),
        "stalled_s": round(sum(stalls), 3),
        "longest_stall_ms": round(1000 * max(stalls, default=0), 1),
    }


def read_for(path: str, seconds: float) -> int:
    """A task: read groups of 4 tiles for ``seconds``, each from another thread while this one waits; groups read."""
    from rsrs.pipeline.reading import SceneReader
    from rsrs.pipeline.scenes import scene_from_raster
    from rsrs.pipeline.tiling import batched, plan_tiles

    scene = scene_from_raster(path)
    groups = batched(list(plan_tiles(scene.grid, tile_size=1024, overlap=64)), 4)
    end, read = time.perf_counter() + seconds, 0
    with SceneReader(scene, threads=2) as reader, ThreadPoolExecutor(1) as waiter:
        while time.perf_counter() < end:
            waiter.submit(reader.read, [t.read for t in groups[read % len(groups)]]).result()
            read += 1
    return read


def one_run(scene: Path, *, profiler: bool, tasks: int, seconds: float) -> dict:
    """A fresh worker's figures with the profiler on or off."""
    with (
        dask.config.set({"distributed.worker.profile.enabled": profiler}),
        LocalCluster(n_workers=1, threads_per_worker=tasks, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.run(instrument)
        reads = client.gather([client.submit(read_for, str(scene), seconds, pure=False) for _ in range(tasks)])
        ((events, _),) = client.run(recorded).values()
    return {"groups_read": sum(reads), **figures(events)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=4, help="task threads of the worker (tasks_per_gpu)")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long each task reads")
    parser.add_argument("--size", type=int, default=4096, help="synthetic scene size (pixels)")
    parser.add_argument("--name", default="worker_profiler", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    result: dict = {**device_info(), **reading_machine(), "tasks": args.tasks, "seconds": args.seconds}
    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "scene.tif"
        write_scene(scene, args.size)
        for profiler in (True, False):
            run = one_run(scene, profiler=profiler, tasks=args.tasks, seconds=args.seconds)
            result["with_profiler" if profiler else "without_profiler"] = run
    write_result(args.name, result)


if __name__ == "__main__":
    main()

"""What a task's reads cost the other threads of its process: reading threads made for each task, lent again from
task to task, or lent and set up beforehand (:class:`rsrs.pipeline.reading.ReadingThreads`).

A GPU worker's thread that queues batches shares the GIL with its tasks' reads, so a read that holds the GIL delays
the GPU's next batch. A probe thread sleeps 2 ms at a time and records how late it wakes: a wake-up more than 10 ms
late is a stall of the whole process. ``--tasks`` tasks in turn each read ``--batches`` groups of 16 tiles of the
synthetic deflate scene of ``benchmarks.run_rss`` through a :class:`~rsrs.pipeline.reading.SceneReader` of
``--threads`` threads (8: what a 16-core GPU worker's tasks use), its threads made for the task (``fresh``, as before)
or lent by one :class:`~rsrs.pipeline.reading.ReadingThreads` (``lent``: its first task makes them; ``warmed``: made
and set up before the tasks, as a GPU worker's warm-up does). Each setting reports the stalls during the tasks' first
groups (which open the scene's files) and during their later groups, the longest, and the groups' median read
seconds. ``open_cpu_ms`` is a thread's first raster open against its second,
in CPU milliseconds of that thread: GDAL's and PROJ's per-thread set-up, with the GIL held.

Run from the repository root:  python -m benchmarks.reader_threads [--size 8192] [--tasks 6] [--batches 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from benchmarks._common import write_result
from benchmarks.read_speed import reading_machine
from benchmarks.run_rss import write_scene
from rsrs.pipeline.reading import ReadingThreads, SceneReader
from rsrs.pipeline.scenes import Scene, open_raster, scene_from_raster
from rsrs.pipeline.tiling import plan_tiles

PROBE_S, STALL_S, BATCH = 0.002, 0.010, 16


def open_cpu_ms(href: str) -> dict[str, float]:
    """CPU milliseconds of a fresh thread's first open of ``href``, and of its second."""
    spent: list[float] = []

    def open_twice() -> None:
        for _ in range(2):
            start = time.thread_time()
            with open_raster(href):
                spent.append((time.thread_time() - start) * 1e3)

    thread = threading.Thread(target=open_twice)
    thread.start()
    thread.join()
    return {"first_open": round(spent[0], 2), "second_open": round(spent[1], 2)}


def read_tasks(scene: Scene, lender: ReadingThreads | None, args: argparse.Namespace) -> dict:
    """Read the tasks' groups in turn beside the probe, their threads lent by ``lender`` (None: made for each task);
    stalls and read seconds, first groups against later."""
    windows = [tile.read for tile in plan_tiles(scene.grid, tile_size=args.tile_size, overlap=64)]
    wakes: list[tuple[float, float]] = []  # (when woken, how late)
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            due = time.perf_counter() + PROBE_S
            time.sleep(PROBE_S)
            woke = time.perf_counter()
            wakes.append((woke, woke - due))

    spans: dict[str, list[tuple[float, float]]] = {"first": [], "later": []}
    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for t in range(args.tasks):
            with SceneReader(scene, threads=args.threads, lender=lender or ReadingThreads()) as reader:
                for b in range(args.batches):
                    start = (t * args.batches + b) * BATCH
                    group = [windows[(start + i) % len(windows)] for i in range(BATCH)]
                    began = time.perf_counter()
                    reader.read(group)
                    spans["first" if b == 0 else "later"].append((began, time.perf_counter()))
    finally:
        stop.set()
        prober.join()

    def during(kind: str) -> dict:
        late = [lateness for woke, lateness in wakes if any(a <= woke <= b for a, b in spans[kind])]
        stalls = [lateness for lateness in late if lateness > STALL_S]
        return {
            "groups": len(spans[kind]),
            "read_s_median": round(statistics.median(b - a for a, b in spans[kind]), 4),
            "stalls": len(stalls),
            "stalled_s": round(sum(stalls), 3),
            "stalled_share": round(sum(stalls) / sum(b - a for a, b in spans[kind]), 3),
            "longest_stall_ms": round(max(late, default=0) * 1e3, 1),
        }

    return {"first_groups": during("first"), "later_groups": during("later")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--batches", type=int, default=3, help="groups of 16 tiles each task reads")
    parser.add_argument("--threads", type=int, default=8, help="threads of each task's SceneReader")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting, alternating (all reported)")
    parser.add_argument("--name", default="reader_threads", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    result: dict = {**reading_machine(), "scene_px": args.size, "tile_size": args.tile_size, "tasks": args.tasks,
                    "groups_per_task": args.batches, "reader_threads": args.threads}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.tif"
        write_scene(path, args.size)
        scene = scene_from_raster(str(path))
        result["open_cpu_ms"] = [open_cpu_ms(str(path)) for _ in range(3)]
        for repeat in range(args.repeats):
            lent, warmed = ReadingThreads(), ReadingThreads()
            warmed.warm(args.threads, niceness=0)
            settings = {"fresh": None, "lent": lent, "warmed": warmed}
            for name, lender in settings.items():
                result.setdefault(name, []).append(read_tasks(scene, lender, args))
                print(name, repeat, result[name][-1], flush=True)
    write_result(args.name, result)


if __name__ == "__main__":
    main()

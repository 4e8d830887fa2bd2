"""How long a GPU worker's task takes to queue a batch it has read, alone and while other tasks' reads decode.

In `rsrs run`'s timelines a task began to queue a group the moment its read ended, yet its batch reached the model's
turn 36-180 ms later, while other tasks' reads ran; queueing is a few launches and copies. This loads a resident
model as a worker does (warmed up for ``--tasks`` tasks), then queues ``--repeats`` batches one after another (each
waited for, so the GPU is idle as it is before a scene's first batch): first with nothing else running, from the
thread that warmed the model up and then each from a fresh thread (a Dask worker's first tasks run on threads that
never touched CUDA; the model's turn inside is timed too), then while
``--readers`` threads each read groups of the synthetic scene of ``benchmarks.run_rss`` through their own
:class:`~rsrs.pipeline.reading.SceneReader`, with its threads ``--niceness`` lower. Each setting reports the wall
time of ``queue_codes`` (mean, max) and, from Python's profiler while it queues, the calls that time went to
(from Python 3.12 ``cProfile`` sees every thread's calls, so beside reads the list holds the reading threads' too).
GDAL starts its decoding threads once per process, with the priority of the thread that first needs them,
so run each ``--niceness`` in its own process.

On an H200 (``queue_latency_nice{10,0}.json``, one run each) queueing took 2.7 and 3.1 ms alone, 6.7 and 7.7 ms
(at most 21) beside three tasks' reads: queueing itself is not what held those batches back.

Run on the GPU machine:  python -m benchmarks.queue_latency [--preset rsrefseg-b] [--niceness 10]
CPU smoke test:          python -m benchmarks.queue_latency --preset tiny --device cpu --size 2048 --tile-size 256
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks._common import device_info, write_result
from benchmarks.read_speed import reading_machine
from benchmarks.run_gpu import QUERIES, random_init_config
from benchmarks.run_rss import write_scene
from rsrs.pipeline.finisher import IO_THREADS
from rsrs.pipeline.reading import SceneReader
from rsrs.pipeline.resident import ModelRef, ResidentModel, set_recorder
from rsrs.pipeline.scenes import Scene, scene_from_raster
from rsrs.pipeline.tiling import batched, plan_tiles


@contextmanager
def reading(scene: Scene, groups: list, readers: int, niceness: int) -> Iterator[None]:
    """``readers`` threads reading ``groups`` over and over, each through its own reader, until the block ends."""
    stop = threading.Event()

    def read(r: int) -> None:
        with SceneReader(scene, threads=IO_THREADS, niceness=niceness) as reader:
            g = r
            while not stop.is_set():
                reader.read([tile.read for tile in groups[g % len(groups)]])
                g += readers

    threads = [threading.Thread(target=read, args=(r,)) for r in range(readers)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # every reader decoding
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def queue_times(resident: ResidentModel, shape: tuple[int, ...], repeats: int) -> dict:
    """Queue ``repeats`` batches one after another, each waited for: wall ms of queueing, and where it went."""
    rgb = resident.host_batch(shape)
    rgb.fill(0)
    profile, seconds = cProfile.Profile(), []
    for _ in range(repeats):
        profile.enable()
        start = time.perf_counter()
        queued = resident.queue_codes(QUERIES[:1], shape[0], rgb)
        seconds.append(time.perf_counter() - start)
        profile.disable()
        queued.result()
    stats = pstats.Stats(profile).stats  # (file, line, name) -> (calls, primitive, own s, cumulative s, callers)
    top = sorted(stats.items(), key=lambda kv: -kv[1][3])[:14]
    return {
        "queue_ms_mean": round(1000 * sum(seconds) / repeats, 2),
        "queue_ms_max": round(1000 * max(seconds), 2),
        "profile_ms_per_queue": [  # cumulative, largest first: 'name (file:line): ms'
            f"{name} ({Path(file).name}:{line}): {1000 * stat[3] / repeats:.2f}" for (file, line, name), stat in top
        ],
    }


def queue_times_in_new_threads(resident: ResidentModel, shape: tuple[int, ...], repeats: int) -> dict:
    """Queue ``repeats`` batches, each from a thread of its own (as a Dask worker's first tasks start on fresh
    threads) and waited for: wall ms of queueing, and of the model's turn inside it."""
    rgb = resident.host_batch(shape)
    rgb.fill(0)
    seconds: list[tuple[float, float]] = []

    turns: list[float] = []  # each model turn's length, from a recorder that keeps only those

    def queue_once() -> None:
        start = time.perf_counter()
        queued = resident.queue_codes(QUERIES[:1], shape[0], rgb)
        seconds.append((time.perf_counter() - start, turns[-1]))
        queued.result()

    set_recorder(lambda kind, start, end, key: turns.append(end - start) if kind == "model" else None)
    try:
        for _ in range(repeats):
            thread = threading.Thread(target=queue_once)
            thread.start()
            thread.join()
    finally:
        set_recorder(None)
    return {
        "queue_ms": [round(1000 * q, 2) for q, _ in seconds],
        "turn_ms": [round(1000 * t, 2) for _, t in seconds],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="rsrefseg-b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=4, help="tasks the model is warmed up for (tasks_per_gpu)")
    parser.add_argument("--readers", type=int, default=3, help="other tasks' reads running meanwhile")
    parser.add_argument("--niceness", type=int, default=10, help="how much lower the reading threads run")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--name", default="queue_latency", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    shape = (args.batch, 3, args.tile_size, args.tile_size)
    result: dict = {**device_info(), **reading_machine(), "preset": args.preset, "batch_shape": shape}
    result |= {"readers": args.readers, "reader_threads": IO_THREADS, "niceness": args.niceness}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.tif"
        write_scene(path, args.size)
        scene = scene_from_raster(str(path))
        groups = batched(list(plan_tiles(scene.grid, tile_size=args.tile_size, overlap=64)), args.batch)
        resident = ResidentModel(ModelRef(str(random_init_config(args.preset, Path(tmp))), device=args.device))
        try:
            resident.warm_up(QUERIES[:1], batch=args.batch, tile=args.tile_size, tasks=args.tasks)
            result["alone"] = queue_times(resident, shape, args.repeats)
            result["alone_each_from_a_new_thread"] = queue_times_in_new_threads(resident, shape, args.repeats)
            with reading(scene, groups, args.readers, args.niceness):
                result["beside_reads"] = queue_times(resident, shape, args.repeats)
        finally:
            resident.close()
    write_result(args.name, result)


if __name__ == "__main__":
    main()

"""Where a GPU worker's time goes during `rsrs run`: the model lock, tile reads and tasks, timed inside the worker.

The worker gets a recorder through ``client.run`` before the job starts (``rsrs.pipeline.resident.set_recorder``:
the model's turns, the reads of tile groups and the tasks), so the run itself is `rsrs run`'s own code on a real
LocalCluster. Reports the scene's lead-in (first task start to the first model batch: the first
read), tail (last batch to the last task's end: copies back and writes), the time the model lock was held and the
gaps between its holds. On a GPU with side-stream copies the lock covers only queueing a batch's work, so there
the gaps are not idle GPU time; the lead-in and tail are.

Run on the GPU machine:  python -m benchmarks.run_timeline [--size 16384] [--queries 1] [--name run_timeline]
CPU smoke test:          python -m benchmarks.run_timeline --preset tiny --device cpu --size 2048
"""

from __future__ import annotations

import argparse
import tempfile
from itertools import pairwise
from pathlib import Path

import dask
from distributed import Client, LocalCluster

from benchmarks._common import device_info, write_result
from benchmarks.run_gpu import QUERIES, random_init_config, write_job
from benchmarks.run_rss import write_scene

Event = tuple[str, int, float, float, str]  # kind, thread, start, end, first tile key


class EventLog:
    """A recorder for the worker's resident model: keeps every event with the thread that saw it."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, kind: str, start: float, end: float, key: str) -> None:
        import threading

        self.events.append((kind, threading.get_ident(), start, end, key))


_LOG = EventLog()


def instrument() -> str:
    """In the worker: send the resident model's timed events (model turns, group reads, tasks) to the log."""
    from rsrs.pipeline.resident import set_recorder

    set_recorder(_LOG)
    return "instrumented"


def recorded() -> list[Event]:
    """In the worker: the events recorded so far."""
    return list(_LOG.events)


def summarise(events: list[Event]) -> dict:
    """Lead-in, tail, lock holds and gaps (seconds) over the span of the job's tasks (the model's warm-up excluded)."""
    tasks = sorted((e for e in events if e[0] == "task"), key=lambda e: e[2])
    begin, end = tasks[0][2], max(t[3] for t in tasks)
    holds = sorted((e for e in events if e[0] == "model" and e[2] >= begin), key=lambda e: e[2])
    reads = [e[3] - e[2] for e in events if e[0] == "read"]
    gaps = [b[2] - a[3] for a, b in pairwise(holds) if b[2] > a[3]]
    return {
        "tasks": len(tasks),
        "batches": len(holds),
        "span_s": round(end - begin, 3),
        "lead_in_s": round(holds[0][2] - begin, 3),
        "tail_s": round(end - holds[-1][3], 3),
        "lock_held_s": round(sum(e[3] - e[2] for e in holds), 3),
        "gaps_between_holds_s": round(sum(gaps), 3),
        "read_s_mean": round(sum(reads) / len(reads), 4),
        "read_s_max": round(max(reads), 4),
        "task_windows_s": [(round(t[2] - begin, 2), round(t[3] - begin, 2)) for t in tasks],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="rsrefseg-b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--queries", type=int, default=1)
    parser.add_argument("--name", default="run_timeline", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scene = folder / "scene.tif"
        write_scene(scene, args.size)
        config = random_init_config(args.preset, folder)
        job = write_job(folder, scene, config, queries=QUERIES[: args.queries], tile=1024, batch=16, device=args.device)
        # the cluster rsrs run starts for one GPU: one non-daemon worker, two task threads, a GPU resource
        with (
            dask.config.set({"distributed.worker.daemon": False}),
            LocalCluster(n_workers=1, threads_per_worker=2, processes=True, resources={"GPU": 1}) as cluster,
            Client(cluster) as client,
        ):
            client.run(instrument)
            from rsrs.workflows import run_job

            report = run_job(job, scheduler=cluster.scheduler_address, progress=False)
            events = [e for worker in client.run(recorded).values() for e in worker]
    scene_report = report["scenes"][0]
    result = {
        "preset": args.preset,
        **device_info(),
        "scene_px": args.size,
        "queries": args.queries,
        "tiles": scene_report["tiles_computed"],
        "scene_wall_s": round(scene_report["wall_s"], 3),
        "tiles_per_s": round(scene_report["tiles_computed"] / scene_report["wall_s"], 2),
        **summarise(events),
    }
    write_result(args.name, result)


if __name__ == "__main__":
    main()

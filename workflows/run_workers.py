"""What the cluster did to a run: which workers ran its tasks, which died under it, and tasks that kept killing them.

Dask reschedules the tasks of a worker that dies (a crash, out of memory, a reclaimed spot machine) on the other
workers, up to ``allowed-failures`` times per task; after that the task fails with ``KilledWorker``, its tiles are
retried one per task (see :mod:`rsrs.workflows.run_compute`), and a tile that kills its workers again fails its
scene, named by its window (a tile that crashes whatever reads it). Chunks and tile
sidecars are whole files written by one rename, so a task rerun after a death rewrites the same bytes.

The scheduler logs every worker removal as an event; the run reads them at the end, so run.json says which workers
were lost and how many tasks each was running.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from distributed import Client, KilledWorker, get_worker

from rsrs.pipeline.tasks import BatchResult, BatchTask, run_batch
from rsrs.pipeline.tiling import Tile


@dataclass
class WorkerLog:
    """The workers of a run: tasks finished per worker address, workers lost while it ran, and the seconds it took
    to reach (or start) the cluster and to load the model on every worker (compiling and warming up included)."""

    allowed_failures: int | None = None  # None: an existing cluster's scheduler setting, unknown here
    tasks: Counter[str] = field(default_factory=Counter)
    lost: list[dict] = field(default_factory=list)
    since: float = field(default_factory=time.time)
    start_s: dict[str, float] = field(default_factory=dict)  # 'cluster', 'model_load'

    def to_json(self) -> dict:
        """The run.json form."""
        return {"allowed_failures": self.allowed_failures, "tasks": dict(sorted(self.tasks.items())),
                "lost": self.lost, "start_s": self.start_s}  # fmt: skip

    def read_losses(self, client: Client) -> None:
        """Record the workers the scheduler removed unexpectedly since the run started (deaths, not retirements)."""
        for timestamp, event in client.get_events("all"):
            if (
                timestamp >= self.since
                and isinstance(event, dict)
                and event.get("action") == "remove-worker"
                and not event.get("expected")
            ):
                running = len(event.get("processing-tasks", ()))
                self.lost.append({"worker": event.get("worker"), "tasks_running": running})


def run_on_worker(task: BatchTask) -> tuple[str, BatchResult]:
    """A task as the cluster runs it: :func:`~rsrs.pipeline.tasks.run_batch`, returning this worker's address and
    the result (the client streams the polygons from the tile sidecars the task wrote)."""
    return get_worker().address, run_batch(task)


def killed_message(error: KilledWorker, tile: Tile) -> str:
    """One line for a one-tile task that workers kept dying on: how often, the tile's window, the last worker."""
    core = tile.core
    last = getattr(error.last_worker, "address", error.last_worker)
    return (
        f"workers died {error.allowed_failures + 1} times running the tile at rows {core.row_off}-{core.row_end}, "
        f"cols {core.col_off}-{core.col_end} (read with its context; the last worker was {last}): reading or "
        "segmenting it crashes the process (out of memory, or a file that crashes GDAL)"
    )

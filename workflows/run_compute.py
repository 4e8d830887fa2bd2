"""Computing a run's tiles on a Dask cluster: the tasks go out lazily, a bounded number at a time, and each
task's outcome (its :class:`~rsrs.pipeline.tasks.BatchResult`, or the error Dask raised) comes back as a value.

Each worker gets only the tasks it can start at once, none waiting behind them: when a worker dies, Dask counts
the death against the tasks it was running (``allowed-failures``), not against one queued behind a tile that
crashes every process reading it. A task that keeps killing its workers (``KilledWorker``) is split: each of its
tiles runs again as a task of its own, so the tile that crashes is named and its neighbours finish.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from distributed import Client, KilledWorker

from rsrs.pipeline.resident import ModelRef
from rsrs.pipeline.tasks import BatchResult, BatchTask
from rsrs.pipeline.tiling import Tile
from rsrs.workflows.cluster import bounded_map, dask_client, gpu_share, load_models, uses_gpus
from rsrs.workflows.job import Job
from rsrs.workflows.run_outputs import MASKS, TILES
from rsrs.workflows.run_plan import ScenePlan, batch_tasks
from rsrs.workflows.run_report import SceneStatus
from rsrs.workflows.run_workers import WorkerLog, run_on_worker

Tagged = tuple[tuple[ScenePlan, BatchTask], BatchTask]


def compute_tiles(
    job: Job,
    plans: Sequence[ScenePlan],
    model: ModelRef,
    out: Path,
    *,
    scheduler: str | None,
    notify: Callable[[str], None],
    workers: WorkerLog,
    prepare: Callable[[ScenePlan], None],
) -> Iterator[tuple[ScenePlan, BatchResult | BaseException, tuple[Tile, ...]]]:
    """Run the plans' tasks on the job's cluster; yield (plan, outcome, the task's tiles) as tasks finish.

    ``workers`` records which worker ran each task and, at the end, the workers lost meanwhile; ``prepare(plan)``
    runs before a scene's first task is submitted.
    """
    texts = tuple(q.text for q in job.queries)
    started = time.perf_counter()
    with dask_client(job.compute, scheduler=scheduler) as client:
        workers.start_s["cluster"] = round(time.perf_counter() - started, 1)
        notify(f"Dask dashboard: {client.dashboard_link}")
        local = not (scheduler or job.compute.scheduler)
        workers.allowed_failures = job.compute.allowed_failures if local else None
        warm_up = (job.tiling.batch_size, job.tiling.tile_size, job.compute.tasks_per_gpu)  # as the tasks run
        started = time.perf_counter()
        load_models(client, model, texts, local=local, warm_up=warm_up)
        workers.start_s["model_load"] = round(time.perf_counter() - started, 1)
        resources = {"GPU": gpu_share(job.compute)} if uses_gpus(client) else None
        running = job.compute.tasks_per_gpu if resources else 1  # tasks a worker runs at once
        planned = batch_tasks(job, plans, model, store=str(out / MASKS), tiles_dir=lambda s: str(out / TILES / s),
                              prepare=prepare)  # fmt: skip
        tasks = _Tasks(planned)
        for (plan, task), outcome in bounded_map(
            client, run_on_worker, tasks, max_in_flight=lambda: running * _n_workers(client), resources=resources
        ):
            if isinstance(outcome, KilledWorker) and len(task.tiles) > 1:
                tasks.split(plan, task)
                continue
            if isinstance(outcome, tuple):
                address, outcome = outcome
                workers.tasks[address] += 1
            yield plan, outcome, task.tiles
        workers.read_losses(client)


class _Tasks:
    """The run's tasks, tagged with their plan: tasks split after a ``KilledWorker`` first, then the planned ones.

    An iterator that may yield again after it ran dry (:func:`bounded_map` asks again as each task finishes).
    """

    def __init__(self, planned: Iterator[tuple[ScenePlan, BatchTask]]) -> None:
        self.planned = planned
        self.again: deque[tuple[ScenePlan, BatchTask]] = deque()

    def __iter__(self) -> _Tasks:
        return self

    def __next__(self) -> Tagged:
        while self.again:
            plan, task = self.again.popleft()
            if plan.report.status is not SceneStatus.FAILED:
                return (plan, task), task
        plan, task = next(self.planned)
        return (plan, task), task

    def split(self, plan: ScenePlan, task: BatchTask) -> None:
        """Run each of ``task``'s tiles again as a task of its own."""
        self.again.extend((plan, replace(task, tiles=(tile,))) for tile in task.tiles)


def _n_workers(client: Client) -> int:
    """Workers the cluster has now (workers may join or leave during a run)."""
    return max(1, len(client.scheduler_info(n_workers=-1)["workers"]))

"""Computing a run's tiles on a Dask cluster: the tasks go out lazily, a bounded number at a time, and each
task's outcome (its :class:`~rsrs.pipeline.tasks.BatchResult`, or the error Dask raised) comes back as a value."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from distributed import Client

from rsrs.pipeline.resident import ModelRef
from rsrs.pipeline.tasks import BatchResult
from rsrs.pipeline.tiling import Tile
from rsrs.workflows.cluster import GPU_PER_TASK, bounded_map, dask_client, load_models, uses_gpus
from rsrs.workflows.job import Job
from rsrs.workflows.run_outputs import MASKS, TILES
from rsrs.workflows.run_plan import ScenePlan, batch_tasks
from rsrs.workflows.run_workers import WorkerLog, run_on_worker


def compute_tiles(
    job: Job,
    plans: Sequence[ScenePlan],
    model: ModelRef,
    out: Path,
    *,
    scheduler: str | None,
    notify: Callable[[str], None],
    workers: WorkerLog,
) -> Iterator[tuple[ScenePlan, BatchResult | BaseException, tuple[Tile, ...]]]:
    """Run the plans' tasks on the job's cluster; yield (plan, outcome, the task's tiles) as tasks finish.

    ``workers`` records which worker ran each task and, at the end, the workers lost meanwhile.
    """
    texts = tuple(q.text for q in job.queries)
    with dask_client(job.compute, scheduler=scheduler) as client:
        notify(f"Dask dashboard: {client.dashboard_link}")
        local = not (scheduler or job.compute.scheduler)
        workers.allowed_failures = job.compute.allowed_failures if local else None
        load_models(client, model, texts, local=local, warm_up=(job.tiling.batch_size, job.tiling.tile_size))
        resources = {"GPU": GPU_PER_TASK} if uses_gpus(client) else None
        running = round(1 / GPU_PER_TASK) if resources else 1  # tasks a worker runs at once
        tasks = batch_tasks(job, plans, model, store=str(out / MASKS), tiles_dir=lambda sid: str(out / TILES / sid))
        tagged = (((plan, task.tiles), task) for plan, task in tasks)
        for (plan, tiles), outcome in bounded_map(
            client, run_on_worker, tagged, max_in_flight=lambda: (running + 1) * _n_workers(client),
            resources=resources,
        ):  # fmt: skip
            if isinstance(outcome, tuple):
                address, outcome = outcome
                workers.tasks[address] += 1
            yield plan, outcome, tiles
        workers.read_losses(client)


def _n_workers(client: Client) -> int:
    """Workers the cluster has now (workers may join or leave during a run)."""
    return max(1, len(client.scheduler_info(n_workers=-1)["workers"]))

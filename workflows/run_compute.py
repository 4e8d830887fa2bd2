"""Computing a run's tiles on a Dask cluster: the tasks go out lazily, a bounded number at a time, and each
task's outcome (its :class:`~rsrs.pipeline.tasks.BatchResult`, or the error Dask raised) comes back as a value."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from rsrs.pipeline.resident import ModelRef
from rsrs.pipeline.tasks import BatchResult, run_batch
from rsrs.workflows.cluster import GPU_PER_TASK, bounded_map, dask_client, load_models, uses_gpus
from rsrs.workflows.job import Job
from rsrs.workflows.run_outputs import MASKS, TILES
from rsrs.workflows.run_plan import ScenePlan, batch_tasks


def compute_tiles(
    job: Job,
    plans: Sequence[ScenePlan],
    model: ModelRef,
    out: Path,
    *,
    scheduler: str | None,
    notify: Callable[[str], None],
) -> Iterator[tuple[ScenePlan, BatchResult | BaseException, int]]:
    """Run the plans' tasks on the job's cluster; yield (plan, outcome, tiles in the task) as tasks finish."""
    texts = tuple(q.text for q in job.queries)
    with dask_client(job.compute, scheduler=scheduler) as client:
        notify(f"Dask dashboard: {client.dashboard_link}")
        local = not (scheduler or job.compute.scheduler)
        load_models(client, model, texts, local=local, warm_up=(job.tiling.batch_size, job.tiling.tile_size))
        resources = {"GPU": GPU_PER_TASK} if uses_gpus(client) else None
        n_workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
        running = round(1 / GPU_PER_TASK) if resources else 1  # tasks a worker runs at once
        tasks = batch_tasks(job, plans, model, store=str(out / MASKS), tiles_dir=lambda sid: str(out / TILES / sid))
        tagged = (((plan, len(task.tiles)), task) for plan, task in tasks)
        for (plan, n_tiles), outcome in bounded_map(
            client, run_batch, tagged, max_in_flight=(running + 1) * n_workers, resources=resources
        ):
            yield plan, outcome, n_tiles

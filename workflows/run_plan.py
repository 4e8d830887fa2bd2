"""The plan of a run, made before any compute: one record per scene (the scene, its tile grid, the tiles still
to compute, its report), and the tasks that compute them.

Planning is pure: which tiles are already done is passed in (the resume markers the run folder holds), so a
plan can be built and checked without touching the run folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, repeat

from rsrs.pipeline.resident import ModelRef
from rsrs.pipeline.scenes import Scene
from rsrs.pipeline.tasks import BatchTask
from rsrs.pipeline.tiling import Tile, TileGrid, plan_tiles
from rsrs.workflows.job import Job
from rsrs.workflows.run_report import SceneReport, SceneStatus

#: Model batches per Dask task: enough for the reader/writer threads to overlap I/O with the model.
BATCHES_PER_TASK = 4


@dataclass
class ScenePlan:
    """One scene of a run: its tiles, those still to compute (grouped into tasks) and its report."""

    scene: Scene
    tiles: TileGrid
    tasks: list[tuple[Tile, ...]]  # the tiles still to compute, a task's worth each
    report: SceneReport

    @property
    def id(self) -> str:
        """The scene id."""
        return self.scene.id


def plan_run(job: Job, scenes: Sequence[Scene], done: Callable[[str], set[str]]) -> list[ScenePlan]:
    """Each scene's plan; ``done(scene_id)`` gives the keys of tiles an earlier run finished."""
    per_task = job.tiling.batch_size * BATCHES_PER_TASK
    first = staggered_sizes(job.compute.tasks_per_gpu, job.tiling.batch_size)  # the run's first tasks
    plans = []
    for scene in scenes:
        tiles = plan_tiles(scene.grid, tile_size=job.tiling.tile_size, overlap=job.tiling.overlap)
        finished = done(scene.id)
        todo = [t for t in tiles if t.key not in finished]
        report = SceneReport.planned(scene, tiles)
        report.tiles_resumed = len(tiles) - len(todo)
        report.status = SceneStatus.PENDING if todo else SceneStatus.DONE
        tasks = cut_tasks(todo, first, per_task)
        first = first[len(tasks) :]
        plans.append(ScenePlan(scene=scene, tiles=tiles, tasks=tasks, report=report))
    return plans


def staggered_sizes(tasks_at_once: int, batch_size: int) -> list[int]:
    """Tiles in each of a run's first ``tasks_at_once`` tasks (those that share a GPU from the start): the k-th
    of n holds k/n of a task's batches. Tasks of one size that start together end together, and then the GPU
    waits for all their successors' first reads at once; staggered, one task starts (reads its first tiles) while
    the others still have batches queued."""
    return [batch_size * max(1, BATCHES_PER_TASK * k // tasks_at_once) for k in range(1, tasks_at_once + 1)]


def cut_tasks(todo: Sequence[Tile], first: Sequence[int], per_task: int) -> list[tuple[Tile, ...]]:
    """``todo`` in consecutive tasks: of ``first[0]``, ``first[1]``, ... tiles, then of ``per_task`` each."""
    sizes = chain(first, repeat(per_task))
    tasks: list[tuple[Tile, ...]] = []
    start = 0
    while start < len(todo):
        size = next(sizes)
        tasks.append(tuple(todo[start : start + size]))
        start += size
    return tasks


def batch_tasks(
    job: Job,
    plans: Sequence[ScenePlan],
    model: ModelRef,
    *,
    store: str,
    tiles_dir: Callable[[str], str],
    prepare: Callable[[ScenePlan], None] = lambda plan: None,
) -> Iterator[tuple[ScenePlan, BatchTask]]:
    """The run's tasks in scene order, made lazily: a scene that has failed submits nothing more, and
    ``prepare(plan)`` (e.g. creating its mosaic) runs just before a scene's first task, while earlier ones compute."""
    texts = tuple(q.text for q in job.queries)
    http = job.network.options()
    for plan in plans:
        if plan.tasks:
            prepare(plan)
        for tiles in plan.tasks:
            if plan.report.status is SceneStatus.FAILED:
                break
            plan.report.started()
            yield (
                plan,
                BatchTask(
                    scene=plan.scene,
                    tiles=tiles,
                    query_texts=texts,
                    model=model,
                    store=store,
                    tiles_dir=tiles_dir(plan.id),
                    threshold=job.output.threshold,
                    batch_size=job.tiling.batch_size,
                    http=http,
                ),
            )

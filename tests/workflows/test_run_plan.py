"""The plan of `rsrs run`: which tiles each task computes."""

import pytest

from rsrs.workflows.inputs import resolve_scenes
from rsrs.workflows.job import Job
from rsrs.workflows.run_plan import BATCHES_PER_TASK, plan_run
from tests.rasters import write_geotiff


def _job(tmp_path, tasks_per_gpu: int) -> Job:
    for name in ("a", "b"):
        write_geotiff(tmp_path / f"{name}.tif", shape=(300, 400), seed=1)
    return Job.model_validate(
        {
            "inputs": [{"geotiff": str(tmp_path / "a.tif")}, {"geotiff": str(tmp_path / "b.tif")}],
            "queries": ["ponds"],
            "tiling": {"tile_size": 64, "overlap": 8, "batch_size": 2},
            "output": {"dir": str(tmp_path / "out")},
            "compute": {"tasks_per_gpu": tasks_per_gpu},
        }
    )


@pytest.mark.parametrize(("tasks_per_gpu", "first_batches"), [(1, [4]), (2, [2, 4]), (4, [1, 2, 3, 4])])
def test_a_runs_first_tasks_are_staggered_so_tasks_sharing_a_gpu_end_apart(tmp_path, tasks_per_gpu, first_batches):
    job = _job(tmp_path, tasks_per_gpu)
    scenes = resolve_scenes(job).scenes
    plans = plan_run(job, scenes, lambda _: set())
    per_task = 2 * BATCHES_PER_TASK
    first, second = ([len(task) for task in plan.tasks] for plan in plans)
    assert first[: len(first_batches)] == [2 * b for b in first_batches]
    assert set(first[len(first_batches) : -1]) == {per_task} and set(second[:-1]) == {per_task}
    for plan in plans:  # every tile once, in the grid's order
        assert [t.key for task in plan.tasks for t in task] == [t.key for t in plan.tiles]


def test_a_resumed_run_plans_only_the_tiles_not_done(tmp_path):
    job = _job(tmp_path, 2)
    scenes = resolve_scenes(job).scenes
    done = {t.key for t in list(plan_run(job, scenes, lambda _: set())[0].tiles)[::3]}
    plans = plan_run(job, scenes, lambda scene_id: done if scene_id == "a" else set())
    planned = [t.key for task in plans[0].tasks for t in task]
    assert planned == [t.key for t in plans[0].tiles if t.key not in done]
    assert plans[0].report.tiles_resumed == len(done) and plans[1].report.tiles_resumed == 0

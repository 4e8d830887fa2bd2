"""Workers that die under a run: a worker SIGKILLed mid-run is replaced and its tasks rerun, with outputs equal
to an uninterrupted run's; a tile that kills every worker reading it fails its scene after a bounded number of
retries (skipped and recorded with its tiles, or the run stopped under `on_error: fail`), never a hang."""

import json
import os
import signal
import threading
import time

import pytest
from click.testing import CliRunner
from distributed import LocalCluster

from rsrs.workflows.cli import cli
from rsrs.workflows.cluster import dask_client
from rsrs.workflows.job import Compute
from rsrs.workflows.run import run_job
from tests.rasters import write_geotiff, write_poison_vrt
from tests.workflows.runs import assert_same_outputs, message_lines, tiles_done, write_job

SCENES = {"a": (144, 240), "b": (120, 168), "c": (96, 120)}  # 60 + 35 + 20 tiles of 24 px cores


@pytest.fixture(scope="module")
def scheduler():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_replaced_and_outputs_equal_an_uninterrupted_run(tmp_path, scheduler):
    reference = write_job(tmp_path / "reference", scenes=SCENES)
    run_job(reference, scheduler=scheduler)
    job = write_job(tmp_path / "killed", scenes=SCENES)
    out = job.parent / "out"
    with dask_client(Compute(n_workers=2)) as client:  # the cluster `rsrs run` starts, held here to kill a worker
        reports: list[dict] = []
        run = threading.Thread(target=lambda: reports.append(run_job(job, scheduler=client.cluster.scheduler_address)))
        run.start()
        busy: list[str] = []
        while not busy and run.is_alive():  # once a few tiles are done, a worker that is running a task
            time.sleep(0.05)
            busy = [w for w, keys in client.processing().items() if keys] if tiles_done(out) >= 12 else []
        assert busy, "the run ended before a worker could be killed"
        os.kill(client.run(os.getpid, workers=busy[:1])[busy[0]], signal.SIGKILL)
        run.join(timeout=600)
    (report,) = reports
    totals = report["totals"]
    assert all(s["status"] == "done" for s in report["scenes"])
    assert totals["tiles_computed"] + totals["tiles_without_data"] == totals["tiles"] == 115
    workers = json.loads((out / "run.json").read_text())["workers"]
    assert workers["lost"] == [{"worker": busy[0], "tasks_running": 1}]  # its task was rerun elsewhere
    assert sum(workers["tasks"].values()) == 16  # every task came back once
    assert_same_outputs(out, reference.parent / "out")


def write_poison_job(folder, **changes):
    """A good scene, and a scene that kills any process reading its rows 33-39, cols 33-39: only the tile whose core
    is rows 24-48, cols 24-48 reads there (with its 8 px of context)."""
    job = write_job(folder, scenes={"good": (96, 120)}, compute={"n_workers": 2, "allowed_failures": 1}, **changes)
    write_geotiff(folder / "poison.tif", shape=(96, 96), seed=9)
    write_poison_vrt(folder / "data" / "poison.vrt", folder / "poison.tif", rows=(33, 39), cols=(33, 39))
    return job


@pytest.fixture
def poison_enabled(monkeypatch):
    """GDAL runs the VRT's Python pixel function in the run's worker processes (they inherit the environment)."""
    monkeypatch.setenv("GDAL_VRT_ENABLE_PYTHON", "YES")


@pytest.mark.slow
def test_a_poison_tile_fails_its_scene_after_bounded_retries_and_the_others_finish(tmp_path, poison_enabled):
    job = write_poison_job(tmp_path, inputs=[{"geotiff": "data/good.tif"}, {"geotiff": "data/poison.vrt"}])
    result = CliRunner().invoke(cli, ["run", str(job)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "run.json").read_text())
    scenes = {s["id"]: s for s in report["scenes"]}
    assert scenes["good"]["status"] == "done" and scenes["poison"]["status"] == "failed"
    error = scenes["poison"]["error"]
    assert error.startswith("workers died 2 times running the tile at rows 24-48, cols 24-48 (read with its context")
    assert "crashes the process" in error
    assert len(report["workers"]["lost"]) == 4  # twice for its task of 8 tiles, twice for its own task
    assert f"skipped scene poison: {error}" in result.output


@pytest.mark.slow
def test_a_poison_tile_under_on_error_fail_stops_the_run_with_one_line(tmp_path, poison_enabled):
    job = write_poison_job(tmp_path, inputs=[{"geotiff": "data/poison.vrt"}], on_error="fail")
    result = CliRunner().invoke(cli, ["run", str(job)])
    assert result.exit_code == 1
    (line,) = message_lines(result.output)
    assert line.startswith("Error: scene poison failed: workers died 2 times running the tile at rows 24-48, "), line

"""Workers that die under a run: a worker SIGKILLed mid-run is replaced and its tasks rerun, with outputs equal
to an uninterrupted run's; a tile that kills every worker reading it fails its scene after a bounded number of
retries (skipped and recorded with its tiles, or the run stopped under `on_error: fail`), never a hang."""

import json
import os
import signal
import threading

import psutil
import pytest
from click.testing import CliRunner
from distributed import LocalCluster

from rsrs.workflows.cli import cli
from rsrs.workflows.run import run_job
from tests.rasters import write_geotiff, write_poison_vrt
from tests.workflows.runs import assert_same_outputs, message_lines, tiles_done, write_job

SCENES = {"a": (144, 240), "b": (120, 168), "c": (96, 120)}  # 60 + 35 + 20 tiles of 24 px cores


@pytest.fixture(scope="module")
def scheduler():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def worker_processes(before: set[int]) -> list[psutil.Process]:
    """This process's Dask worker processes started since ``before`` (pids)."""
    children = psutil.Process().children(recursive=True)
    return [p for p in children if p.pid not in before and "spawn_main" in " ".join(p.cmdline())]


def test_a_worker_killed_mid_run_is_replaced_and_outputs_equal_an_uninterrupted_run(tmp_path, scheduler):
    reference = write_job(tmp_path / "reference", scenes=SCENES)
    run_job(reference, scheduler=scheduler)
    job = write_job(tmp_path / "killed", scenes=SCENES, compute={"n_workers": 2})
    out = job.parent / "out"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    killed: list[int] = []

    def kill_one_worker() -> None:  # once a few tiles are done, SIGKILL one of the run's two workers
        while tiles_done(out) < 12:
            threading.Event().wait(0.05)
        victim = worker_processes(before)[0]
        killed.append(victim.pid)
        os.kill(victim.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    report = run_job(job)
    killer.join(timeout=1)
    assert killed, "the run ended before a worker could be killed"
    totals = report["totals"]
    assert all(s["status"] == "done" for s in report["scenes"])
    assert totals["tiles_computed"] + totals["tiles_without_data"] == totals["tiles"] == 115
    workers = json.loads((out / "run.json").read_text())["workers"]
    (lost,) = workers["lost"]  # the killed worker, with the task it was running (0 if it was between two)
    assert lost["tasks_running"] in (0, 1) and workers["allowed_failures"] == 3
    assert len(workers["tasks"]) >= 2 and sum(workers["tasks"].values()) == 16  # every task came back once
    assert_same_outputs(out, reference.parent / "out")


def write_poison_job(folder, **changes):
    """A good scene, and a scene that kills any process reading its rows 40-50, cols 40-50."""
    job = write_job(folder, scenes={"good": (96, 120)}, compute={"n_workers": 2, "allowed_failures": 1}, **changes)
    write_geotiff(folder / "poison.tif", shape=(96, 96), seed=9)
    write_poison_vrt(folder / "data" / "poison.vrt", folder / "poison.tif", rows=(40, 50), cols=(40, 50))
    return job


@pytest.fixture
def poison_enabled(monkeypatch):
    """GDAL runs the VRT's Python pixel function in the run's worker processes (they inherit the environment)."""
    monkeypatch.setenv("GDAL_VRT_ENABLE_PYTHON", "YES")


def test_a_poison_tile_fails_its_scene_after_bounded_retries_and_the_others_finish(tmp_path, poison_enabled):
    job = write_poison_job(tmp_path, inputs=[{"geotiff": "data/good.tif"}, {"geotiff": "data/poison.vrt"}])
    result = CliRunner().invoke(cli, ["run", str(job)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "run.json").read_text())
    scenes = {s["id"]: s for s in report["scenes"]}
    assert scenes["good"]["status"] == "done" and scenes["poison"]["status"] == "failed"
    error = scenes["poison"]["error"]
    assert error.startswith("workers died 2 times running its tiles in rows ") and "crashes the process" in error
    rows, cols = (tuple(int(v) for v in part.split()[1].split("-")) for part in error.split(" in ")[1].split(", ")[:2])
    assert rows[0] <= 40 and rows[1] >= 50 and cols[0] <= 40 and cols[1] >= 50  # the tiles it names hold the poison
    assert len(report["workers"]["lost"]) == 2
    assert f"skipped scene poison: {error}" in result.output


def test_a_poison_tile_under_on_error_fail_stops_the_run_with_one_line(tmp_path, poison_enabled):
    job = write_poison_job(tmp_path, inputs=[{"geotiff": "data/poison.vrt"}], on_error="fail")
    result = CliRunner().invoke(cli, ["run", str(job)])
    assert result.exit_code == 1
    (line,) = message_lines(result.output)
    assert line.startswith("Error: scene poison failed: workers died 2 times running its tiles in rows "), line

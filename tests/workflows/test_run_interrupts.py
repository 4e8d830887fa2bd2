"""Ctrl-C (SIGINT) and SIGTERM while a run opens scenes, computes tiles and writes its GeoParquet: a prompt exit
with one line (130 / 143), nothing half-written under a final name, and a rerun that ends equal to an
uninterrupted run."""

import os
import signal
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from rsrs.workflows.cli import RsrsGroup
from rsrs.workflows.run import run_job
from tests.servers import range_file_server
from tests.workflows.runs import (
    assert_complete_and_readable,
    assert_same_outputs,
    message_lines,
    start_run,
    temporary_files,
    tiles_done,
    wait_until,
    write_dense_tiles,
    write_job,
)

SCENES = {"a": (120, 240), "b": (96, 96)}
SIGNALS = {"SIGINT": (signal.SIGINT, 130, "Interrupted"), "SIGTERM": (signal.SIGTERM, 143, "Terminated (SIGTERM)")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, scheduler):
    """The outputs of an uninterrupted run of the job."""
    job = write_job(tmp_path_factory.mktemp("reference"), scenes=SCENES)
    run_job(job, scheduler=scheduler)
    return job.parent / "out"


def stop(proc, name: str) -> tuple[int, list[str]]:
    """Signal the run's process group as a terminal (SIGINT) or a batch system (SIGTERM) does; its exit and lines."""
    sig, _, _ = SIGNALS[name]
    os.killpg(proc.pid, sig)
    _, stderr = proc.communicate(timeout=120)  # a hang fails here
    return proc.returncode, message_lines(stderr)


def assert_stopped(code: int, lines: list[str], name: str) -> None:
    _, exit_code, said = SIGNALS[name]
    assert code == exit_code, lines
    assert lines == [f"{said}; finished work is kept (rerun the same command to resume)."]


def assert_nothing_half_written(out: Path) -> None:
    """No temporary file left, and every polygon file and tile sidecar under its final name reads."""
    import pyarrow.parquet as pq

    assert temporary_files(out) == []
    for path in [*out.glob("polygons.parquet/*"), *out.glob("tiles/*/*")]:
        pq.read_table(path)


def test_sigterm_stops_a_command_with_143_and_one_line_and_a_second_sigterm_does_not_cut_its_cleanup():
    cleaned = []

    @click.group(cls=RsrsGroup)
    def group():
        pass

    @group.command()
    def work():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # interrupted by the first SIGTERM
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # ignored while cleaning up
            cleaned.append(True)

    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(group, ["work"])
    assert cleaned == [True]
    assert_stopped(result.exit_code, message_lines(result.output), "SIGTERM")
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_stopped_while_computing_tiles_then_rerun_equals_an_uninterrupted_run(tmp_path, name, reference, scheduler):
    job = write_job(tmp_path, scenes=SCENES)
    out = tmp_path / "out"
    proc = start_run(job)
    wait_until(lambda: tiles_done(out) >= 3, proc)
    assert_stopped(*stop(proc, name), name)
    assert_nothing_half_written(out)
    assert not (out / "run.json").exists()
    resumed = run_job(job, scheduler=scheduler)
    assert resumed["totals"]["tiles_resumed"] >= 3
    assert_same_outputs(out, reference)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_stopped_while_writing_polygons_then_rerun_equals_an_uninterrupted_run(tmp_path, name, scheduler):
    """Every tile done (sidecars of a dense field of small squares, no model run): the run only streams ~26,000
    polygons into polygons.parquet/; it is stopped as the folder appears, and a rerun completes it."""
    jobs = {}
    for case in ("reference", "stopped"):
        jobs[case] = write_job(tmp_path / case, scenes={"dense": (480, 480)}, queries=["squares"],
                               tiling={"tile_size": 264, "overlap": 12, "batch_size": 1})  # fmt: skip
        write_dense_tiles(jobs[case])
    run_job(jobs["reference"], scheduler=scheduler)
    out = tmp_path / "stopped" / "out"
    proc = start_run(jobs["stopped"])
    wait_until(lambda: (out / "polygons.parquet").exists(), proc, poll=0.005)
    assert_stopped(*stop(proc, name), name)
    assert_nothing_half_written(out)
    assert not (out / "polygons.parquet" / "dense.parquet").exists() and not (out / "run.json").exists()
    run_job(jobs["stopped"], scheduler=scheduler)
    assert_complete_and_readable(out)
    assert_same_outputs(out, tmp_path / "reference" / "out")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_stopped_while_opening_scenes_writes_nothing(tmp_path, name):
    """Thirty remote scenes on a slow server (0.2 s a request): stopped while the client opens them."""
    write_job(tmp_path / "served", scenes={f"s{i:02d}": (48, 48) for i in range(30)})
    with range_file_server(tmp_path / "served" / "data", delay=0.2) as url:
        job = write_job(tmp_path, scenes={}, inputs=[{"geotiff": f"{url}/s{i:02d}.tif"} for i in range(30)])
        proc = start_run(job)
        seen = ""
        while "opening scenes" not in seen:  # the progress bar of the opening step is up
            char = proc.stderr.read(1)
            assert char, f"the run ended before opening scenes: {seen}"
            seen += char
        code, lines = stop(proc, name)
    assert_stopped(code, message_lines(seen) + lines, name)
    assert not (tmp_path / "out").exists()

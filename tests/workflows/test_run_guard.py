"""What `rsrs run` does with the run folder: it refuses unusable folders and other jobs' outputs, and a run that
computes nothing leaves earlier outputs as they were."""

import json
import os
import shutil

import geopandas as gpd
import pytest
import yaml
from click.testing import CliRunner

from rsrs.workflows.cli import cli
from rsrs.workflows.run import run_job
from tests.rasters import write_geotiff
from tests.servers import rustac_api, rustac_available

TILING = {"tile_size": 40, "overlap": 8, "batch_size": 4}


def write_job(folder, **changes):
    """One small scene and a job over it, writing into folder/out."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    write_geotiff(folder / "data" / "a.tif", shape=(48, 64), seed=1)
    job = {
        "inputs": [{"geotiff": "data/*.tif"}],
        "queries": ["dark ponds"],
        "model": {"preset": "tiny", "device": "cpu"},
        "tiling": TILING,
        "output": {"dir": "out", "threshold": 0.49},
    } | changes
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture
def finished(tmp_path, scheduler):
    """A finished run of the job in tmp_path."""
    run_job(write_job(tmp_path), scheduler=scheduler)
    return tmp_path


def snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def stac_items(folder):
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "a", "collection": "c",
        "geometry": {"type": "Polygon", "coordinates": [[[-99, 37], [-98, 37], [-98, 38], [-99, 38], [-99, 37]]]},
        "bbox": [-99, 37, -98, 38], "properties": {"datetime": "2021-06-01T00:00:00Z"}, "links": [],
        "assets": {"image": {"href": str(folder / "data" / "a.tif"), "type": "image/tiff"}},
    }  # fmt: skip
    (folder / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    return folder / "items.json"


@pytest.mark.parametrize("case", ["missing file", "empty glob", "refusing STAC API"])
def test_a_rerun_whose_inputs_all_fail_leaves_the_outputs_untouched(tmp_path, scheduler, case):
    if case == "refusing STAC API" and not rustac_available():
        pytest.skip("rustac is not installed")
    inputs = {
        "missing file": [{"geotiff": "data/a.tif"}],
        "empty glob": [{"geotiff": "data/*.tif"}],
        "refusing STAC API": [{"stac": {"api": "API", "collections": ["c"]}}],
    }[case]
    job = write_job(tmp_path, inputs=inputs)
    if case == "refusing STAC API":
        with rustac_api(stac_items(tmp_path)) as url:
            job = write_job(tmp_path, inputs=[{"stac": {"api": url, "collections": ["c"]}}])
            run_job(job, scheduler=scheduler)
    else:
        run_job(job, scheduler=scheduler)
        (tmp_path / "data" / "a.tif").rename(tmp_path / "a.tif.moved")
    before = snapshot(tmp_path / "out")
    assert {"polygons.parquet/a.parquet", "run.json"} <= {str(p) for p in before}
    code, output = invoke("run", job, "--scheduler", scheduler)
    assert code == 1 and output.count("\n") == 1, output
    assert "no scene could be opened" in output and "nothing was written" in output
    assert snapshot(tmp_path / "out") == before


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"queries": ["red roofs"]}, "queries"),
        ({"tiling": TILING | {"tile_size": 48}}, "tiling"),
        ({"model": {"preset": "demo", "device": "cpu"}}, "model"),
        ({"output": {"dir": "out", "threshold": 0.7}}, "threshold"),
    ],
)
def test_another_jobs_outputs_are_refused_unless_overwrite(finished, change, named):
    before = snapshot(finished / "out")
    job = write_job(finished, **change)
    code, output = invoke("run", job)
    assert code == 1 and output.count("\n") == 1, output
    assert f"holds the outputs of another job ({named} differ)" in output and "--overwrite" in output
    assert snapshot(finished / "out") == before


def test_overwrite_replaces_another_jobs_outputs(finished, scheduler):
    job = write_job(finished, queries=["red roofs"])
    report = run_job(job, overwrite=True, scheduler=scheduler)
    assert report["totals"]["tiles_resumed"] == 0
    assert set(gpd.read_parquet(finished / "out" / "polygons.parquet").query_id) == {"red-roofs"}
    assert json.loads((finished / "out" / "run.json").read_text())["identity"]["queries"] == [
        ["red-roofs", "red roofs"]
    ]


def test_another_jobs_outputs_are_refused_even_after_a_crash_before_run_json(finished):
    (finished / "out" / "run.json").unlink()  # a first run that died mid-way leaves no report
    code, output = invoke("run", write_job(finished, queries=["red roofs"]))
    assert code == 1 and "holds the outputs of another job (queries differ)" in output


def test_an_output_folder_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    code, output = invoke("run", write_job(tmp_path))
    assert code == 1 and output.count("\n") == 1
    assert f"output folder {tmp_path / 'out'} is a file" in output


def test_an_output_folder_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    code, output = invoke("run", write_job(tmp_path, output={"dir": "file/out"}))
    assert code == 1 and output.count("\n") == 1
    assert "lies under the file" in output and str(tmp_path / "file") in output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only-permission folders")
def test_an_unwritable_output_folder_is_one_line(tmp_path):
    (tmp_path / "locked").mkdir(mode=0o555)
    code, output = invoke("run", write_job(tmp_path, output={"dir": "locked/out"}))
    assert code == 1 and output.count("\n") == 1 and "not writable" in output


def test_a_read_only_mount_is_one_line(tmp_path):
    """A bind mount made read-only (needs root and a mount namespace: skipped where unavailable)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to make a read-only mount")
    import subprocess
    import sys

    job = write_job(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (
        f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && "
        f"{sys.executable} -c 'from rsrs.workflows.cli import main; main()' run {job} --output-dir {ro / 'out'}"
    )
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    if "mount" in result.stderr and result.returncode != 1:
        pytest.skip(f"cannot make a read-only mount here: {result.stderr.strip()}")
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "read-only" in lines[0] and "Traceback" not in result.stderr


def test_run_json_records_the_device_the_model_ran_on_not_auto(tmp_path, scheduler):
    report = run_job(write_job(tmp_path, model={"preset": "tiny", "device": "auto"}), scheduler=scheduler)
    assert report["model"]["device"] == "cpu" and report["model"]["device_requested"] == "auto"

"""Resume after a hard kill: nothing finished is recomputed and outputs equal an uninterrupted run's."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import yaml
from geopandas.testing import assert_geodataframe_equal

from rsrs.pipeline.mosaic import open_mosaic
from rsrs.workflows.run import run_job
from tests.rasters import write_geotiff


def write_job(folder: Path) -> Path:
    """One 240 x 240 scene cut into 100 tiles, polygons thresholded so that every tile has some."""
    folder.mkdir(parents=True, exist_ok=True)
    write_geotiff(folder / "scene.tif", shape=(240, 240), nodata=0, seed=5)
    job = {
        "inputs": [{"geotiff": "scene.tif"}],
        "queries": ["dark ponds", "red roofs"],
        "model": {"preset": "tiny", "device": "cpu"},
        "tiling": {"tile_size": 40, "overlap": 8, "batch_size": 2},
        "output": {"dir": "out", "threshold": 0.49},
        "compute": {"n_workers": 1},
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(job))
    return folder / "job.yaml"


def run_and_kill(job: Path, *, after_tiles: int) -> int:
    """Start `rsrs run` in its own process group, SIGKILL the group once ``after_tiles`` are done."""
    tiles_dir = job.parent / "out" / "tiles" / "scene"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from rsrs.workflows.cli import main; main()", "run", str(job)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if tiles_dir.exists() and len(list(tiles_dir.glob("*.parquet"))) >= after_tiles:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return len(list(tiles_dir.glob("*.parquet")))


@pytest.mark.slow
def test_killed_run_resumes_without_recomputing_and_matches_an_uninterrupted_run(tmp_path):
    reference = run_job(write_job(tmp_path / "ref"), progress=False)
    total = reference["totals"]["tiles"]
    job = write_job(tmp_path / "killed")
    done = run_and_kill(job, after_tiles=20)
    out = job.parent / "out"
    assert 20 <= done < total, "the run must be killed midway"
    assert not (out / "polygons.parquet").exists() and not (out / "run.json").exists()

    resumed = run_job(job, progress=False)
    assert resumed["totals"]["tiles_resumed"] == done
    recomputed = resumed["totals"]["tiles_computed"] + resumed["totals"]["tiles_without_data"]
    assert recomputed + done == total
    assert_geodataframe_equal(
        gpd.read_parquet(out / "polygons.parquet"), gpd.read_parquet(tmp_path / "ref" / "out" / "polygons.parquet")
    )
    got = open_mosaic(out / "masks.zarr", "scene")["probability"].values
    want = open_mosaic(tmp_path / "ref" / "out" / "masks.zarr", "scene")["probability"].values
    np.testing.assert_array_equal(got, want)

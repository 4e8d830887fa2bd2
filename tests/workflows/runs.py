"""Helpers for tests that run `rsrs run` as users do (a separate process, signals, its own cluster) and compare
what runs leave behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import yaml
import zarr
from geopandas.testing import assert_geodataframe_equal

from rsrs.pipeline.polygons import polygonise_codes, save_tile
from rsrs.pipeline.tasks import tile_path
from rsrs.pipeline.tiling import plan_tiles
from rsrs.workflows.inputs import resolve_scenes
from rsrs.workflows.job import load_job
from tests.rasters import write_geotiff

#: `rsrs run` as a user starts it, with this interpreter (whatever `rsrs` is on PATH).
RSRS = [sys.executable, "-c", "from rsrs.workflows.cli import main; main()"]
TILING = {"tile_size": 40, "overlap": 8, "batch_size": 2}  # core 24


def write_job(folder: Path, *, scenes: dict[str, tuple[int, int]], **changes) -> Path:
    """Seeded scenes (name -> (ny, nx)) in folder/data and a tiny-model job over them writing into folder/out."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for seed, (name, shape) in enumerate(sorted(scenes.items())):
        write_geotiff(folder / "data" / f"{name}.tif", shape=shape, nodata=0, seed=seed + 1)
    job = {
        "inputs": [{"geotiff": "data/*.tif"}],
        "queries": ["dark ponds", "red roofs"],
        "model": {"preset": "tiny", "device": "cpu"},
        "tiling": TILING,
        "output": {"dir": "out", "threshold": 0.49},
        "compute": {"n_workers": 1},
    } | changes
    (folder / "job.yaml").write_text(yaml.safe_dump(job))
    return folder / "job.yaml"


def start_run(job: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`rsrs run JOB ARGS` in its own process group (signalled as a terminal or batch system signals it)."""
    return subprocess.Popen(
        [*RSRS, "run", str(job), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=None if env is None else os.environ | env,
    )


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, *, timeout: float = 180.0, poll: float = 0.05):
    """Wait until ``ready()``; fail (with the process's stderr) if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended first (exit {proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the run")
        time.sleep(poll)


def tiles_done(out: Path) -> int:
    """Tile sidecars (done-markers) in a run folder."""
    return len(list((out / "tiles").glob("*/*.parquet")))


def message_lines(output: str) -> list[str]:
    """What a command said, without progress bar frames."""
    lines = output.replace("\r", "\n").splitlines()
    return [line for line in lines if line.strip() and not any(bar in line for bar in ("rsrs run:", "opening scenes"))]


def is_temporary(path: Path) -> bool:
    """A name rsrs writes before the final rename (rsrs.core.files.atomic_path: ``.<name>.<pid>.<hex>.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def final_files(out: Path) -> dict[str, int]:
    """Files under their final names (not temporary ones), with sizes; Zarr format 2's .zarray/.zattrs count."""
    return {
        str(path.relative_to(out)): path.stat().st_size
        for path in sorted(out.rglob("*"))
        if path.is_file() and not is_temporary(path)
    }


def temporary_files(out: Path) -> list[str]:
    """Temporary files left in a run folder (none, once a run has ended in any way)."""
    return [str(path.relative_to(out)) for path in sorted(out.rglob("*")) if path.is_file() and is_temporary(path)]


def assert_complete_and_readable(out: Path) -> None:
    """Every output a reader opens is whole: run.json parses, every polygon file and the folder read."""
    json.loads((out / "run.json").read_text())
    gpd.read_parquet(out / "polygons.parquet")


def assert_same_outputs(out: Path, reference: Path) -> None:
    """Equal Zarr arrays (every scene, byte for byte once decoded) and equal polygon rows (sorted) and tile sets."""
    got, want = zarr.open_group(out / "masks.zarr", mode="r"), zarr.open_group(reference / "masks.zarr", mode="r")
    assert sorted(got.group_keys()) == sorted(want.group_keys())
    for scene in want.group_keys():
        for name in want[scene].array_keys():
            np.testing.assert_array_equal(got[scene][name][...], want[scene][name][...], err_msg=f"{scene}/{name}")
    assert_geodataframe_equal(sorted_polygons(out), sorted_polygons(reference))
    tiles = sorted(str(p.relative_to(out)) for p in (out / "tiles").rglob("*.parquet"))
    assert tiles == sorted(str(p.relative_to(reference)) for p in (reference / "tiles").rglob("*.parquet"))


def sorted_polygons(out: Path) -> gpd.GeoDataFrame:
    """A run's polygons in a canonical row order."""
    frame = gpd.read_parquet(out / "polygons.parquet")
    frame["wkb"] = frame.geometry.to_wkb()
    return frame.sort_values(["scene_id", "query_id", "wkb"]).drop(columns="wkb").reset_index(drop=True)


def write_dense_tiles(job_path: Path, *, pitch: int = 3, size: int = 2) -> int:
    """Tile sidecars for every tile of a job's scenes, as if the model had found a dense field of small squares in the
    first query (``size`` px every ``pitch`` px, placed so that squares straddle every core border whose offset is a
    multiple of ``pitch``): the client's polygon step then has real work -- many polygons, some cut by core borders
    and merged back -- and no model runs (a rerun finds every tile done). Returns the number of tile polygons."""
    job = load_job(job_path)
    out = Path(job.output.dir)
    count = 0
    for scene in resolve_scenes(job).scenes:
        ny, nx = scene.grid.shape
        rows, cols = (np.arange(ny) + 1) % pitch < size, (np.arange(nx) + 1) % pitch < size
        codes = np.zeros((len(job.queries), ny, nx), np.uint8)
        codes[0] = np.where(rows[:, None] & cols[None, :], 254, 0)  # probability 1 inside, 0 outside
        tiles_dir = out / "tiles" / scene.id
        tiles_dir.mkdir(parents=True, exist_ok=True)
        for tile in plan_tiles(scene.grid, tile_size=job.tiling.tile_size, overlap=job.tiling.overlap):
            core = (slice(None), *tile.core.slices())
            polygons = polygonise_codes(codes[core], key=tile.key, core=tile.core, scene_shape=(ny, nx),
                                        threshold=job.output.threshold)  # fmt: skip
            save_tile(polygons, tile_path(tiles_dir, tile))
            count += len(polygons)
    return count

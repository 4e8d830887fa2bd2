"""End to end: `rsrs run` over synthetic GeoTIFFs on real Dask clusters with the tiny model."""

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
import yaml
from click.testing import CliRunner
from geopandas.testing import assert_geodataframe_equal

from rsrs.model import load_model
from rsrs.pipeline.mosaic import open_mosaic
from rsrs.pipeline.reading import read_tile
from rsrs.pipeline.tiling import plan_tiles
from rsrs.workflows.cli import cli
from rsrs.workflows.inputs import resolve_scenes
from rsrs.workflows.job import load_job
from rsrs.workflows.run import run_job
from tests.rasters import invalid_region, write_geotiff

TILING = {"tile_size": 40, "overlap": 8, "batch_size": 4}  # core 24: scene a's invalid left 25 px fill its col 0


def write_job(folder: Path, **changes) -> Path:
    """Two scenes (UTM with a nodata band on the left, Web Mercator without nodata) and a job over them."""
    data = folder / "data"
    data.mkdir(exist_ok=True)
    write_geotiff(data / "a.tif", shape=(96, 200), nodata=0, seed=1, res=0.5)
    write_geotiff(data / "b.tif", shape=(60, 70), seed=2, crs="EPSG:3857", res=2.0, origin=(1000.0, 5000.0))
    job = {
        "inputs": [{"geotiff": "data/*.tif"}],
        "queries": [{"id": "ponds", "text": "the dark ponds"}, "red roofs"],
        "model": {"preset": "tiny", "device": "cpu"},
        "tiling": TILING,
        "output": {"dir": "out", "threshold": 0.49, "vector_crs": "EPSG:4326"},
        "compute": {"n_workers": 1},
    } | changes
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def write_corrupt_geotiff(path: Path) -> None:
    """A GeoTIFF whose header opens but whose compressed pixels fail to decode (fails in the tasks)."""
    write_geotiff(path, shape=(64, 64), seed=3, tiled=False)
    raw = bytearray(path.read_bytes())
    raw[-2000:] = b"\xff" * 2000
    path.write_bytes(raw)


def read_report(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete run through the CLI, on the LocalCluster that `rsrs run` starts itself."""
    folder = tmp_path_factory.mktemp("run")
    job = write_job(folder)
    result = CliRunner().invoke(cli, ["run", str(job)])
    assert result.exit_code == 0, result.output
    return job, folder / "out"


def test_mosaic_equals_the_model_output_of_every_tile_core(finished):
    job_path, out = finished
    job = load_job(job_path)
    model = load_model("tiny", device="cpu")
    texts = [q.text for q in job.queries]
    for scene in resolve_scenes(job).scenes:
        mosaic = open_mosaic(out / "masks.zarr", scene.id)["probability"].values  # Q x ny x nx
        for tile in plan_tiles(scene.grid, tile_size=TILING["tile_size"], overlap=TILING["overlap"]):
            rgb, valid = read_tile(scene, tile.read)
            core = tile.core_in_read.slices()
            got = mosaic[(slice(None), *tile.core.slices())]
            if not valid[core].any():
                assert np.isnan(got).all()
                continue
            want = model.predict(torch.from_numpy(rgb[None]), texts)[0].numpy()[(slice(None), *core)]
            want = np.where(valid[core], want, np.nan)
            np.testing.assert_allclose(got, want, atol=0.5 / 254 + 1e-5, equal_nan=True)


def test_mosaic_has_the_source_crs_transform_and_nan_at_nodata(finished):
    job_path, out = finished
    for name in ("a", "b"):
        ds = open_mosaic(out / "masks.zarr", name)
        with rasterio.open(job_path.parent / "data" / f"{name}.tif") as src:
            assert ds.rio.crs == src.crs
            assert ds.rio.transform() == src.transform
            shape = src.shape
        assert list(ds["query"].values) == ["ponds", "red-roofs"]
        prob = ds["probability"].values
        if name == "a":
            assert np.isnan(prob[:, invalid_region(shape)]).all()
            assert not np.isnan(prob[:, ~invalid_region(shape)]).any()
        assert np.nanmin(prob) >= 0 and np.nanmax(prob) <= 1


def test_polygons_are_merged_across_tiles_and_written_as_geoparquet(finished):
    _, out = finished
    frame = gpd.read_parquet(out / "polygons.parquet")
    assert list(frame.columns) == ["scene_id", "query_id", "query", "score", "area_m2", "geometry"]
    assert frame.crs == "EPSG:4326"
    parts = sorted((out / "polygons.parquet").iterdir())  # one GeoParquet file per scene
    assert [p.name for p in parts] == ["a.parquet", "b.parquet"]
    for part in parts:
        schema = pq.read_schema(part)
        geo = json.loads(schema.metadata[b"geo"])
        assert geo["version"] == "1.1.0" and "covering" in geo["columns"]["geometry"] and "bbox" in schema.names
    # at threshold 0.49 the tiny model marks every valid pixel: one polygon per scene and query
    assert sorted(zip(frame.scene_id, frame.query_id, strict=True)) == [
        ("a", "ponds"), ("a", "red-roofs"), ("b", "ponds"), ("b", "red-roofs")
    ]  # fmt: skip
    a = frame[frame.scene_id == "a"]
    valid_px = (~invalid_region((96, 200))).sum()
    assert a.area_m2.tolist() == pytest.approx([valid_px * 0.25 / 0.9996**2] * 2)  # on the ground (UTM scale 0.9996)
    assert a.to_crs("EPSG:32614").area.tolist() == pytest.approx([valid_px * 0.25] * 2, rel=1e-6)
    assert ((frame.score > 0.49) & (frame.score <= 1)).all()


def test_report_counts_tiles_and_skips_tiles_without_data(finished):
    _, out = finished
    report = read_report(out)
    scenes = {s["id"]: s for s in report["scenes"]}
    assert scenes["a"]["tiles_total"] == 4 * 9 and scenes["b"]["tiles_total"] == 3 * 3
    assert scenes["a"]["tiles_without_data"] == 4  # the first tile column lies in the nodata band
    assert scenes["a"]["tiles_computed"] == 32 and scenes["b"]["tiles_computed"] == 9
    assert all(s["status"] == "done" for s in report["scenes"])
    assert report["model"] == {"source": "tiny", "device": "cpu", "device_requested": "cpu", "compile": False,
                               "precision": "auto"}  # fmt: skip
    assert report["totals"]["polygons"] == 4


def test_rerun_recomputes_nothing_and_rewrites_identical_outputs(finished, tmp_path):
    job_path, out = finished
    before = gpd.read_parquet(out / "polygons.parquet")
    result = run_job(job_path, progress=False)
    assert result["totals"]["tiles_computed"] == 0
    assert result["totals"]["tiles_resumed"] == result["totals"]["tiles"]
    assert_geodataframe_equal(gpd.read_parquet(out / "polygons.parquet"), before)


def test_dry_run_lists_scenes_and_tiles_without_running(tmp_path):
    job = write_job(tmp_path)
    result = CliRunner().invoke(cli, ["run", str(job), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split()[:1] == ["a"] and "96 x 200" in line and "EPSG:32614" in line for line in lines)
    assert "total: 2 scene(s), 45 tile(s)" in result.output
    assert not (tmp_path / "out").exists()


def test_overwrite_recomputes_everything_on_an_existing_cluster(tmp_path, scheduler):
    job = write_job(tmp_path)
    first = run_job(job, scheduler=scheduler, progress=False)
    marker = tmp_path / "out" / "tiles" / "a" / "stale.parquet"
    marker.write_bytes(b"not a tile")
    again = run_job(job, scheduler=scheduler, overwrite=True, progress=False)
    assert again["totals"]["tiles_computed"] == first["totals"]["tiles_computed"] == 41
    assert again["totals"]["tiles_resumed"] == 0 and not marker.exists()


def test_bad_scenes_are_skipped_and_reported(tmp_path, scheduler):
    job = write_job(tmp_path)
    (tmp_path / "data" / "corrupt.tif").write_bytes(b"II*\x00 this is not a tiff")
    write_corrupt_geotiff(tmp_path / "data" / "c.tif")
    result = CliRunner().invoke(cli, ["run", str(job), "--scheduler", scheduler])
    assert result.exit_code == 0, result.output
    scenes = read_report(tmp_path / "out")["scenes"]
    failed = {Path(s["source"]).name: s for s in scenes if s["status"] == "failed"}
    assert set(failed) == {"corrupt.tif", "c.tif"}
    assert all(s["error"] for s in failed.values())
    assert {s["id"] for s in scenes if s["status"] == "done"} == {"a", "b"}
    assert set(gpd.read_parquet(tmp_path / "out" / "polygons.parquet").scene_id) == {"a", "b"}


def test_on_error_fail_stops_at_the_first_failing_scene(tmp_path, scheduler):
    job = write_job(tmp_path, inputs=[{"geotiff": "data/c.tif"}], on_error="fail")
    write_corrupt_geotiff(tmp_path / "data" / "c.tif")
    result = CliRunner().invoke(cli, ["run", str(job), "--scheduler", scheduler])
    assert result.exit_code == 1
    assert "scene c failed" in result.output
    assert not (tmp_path / "out" / "polygons.parquet").exists()


def test_nothing_to_run_exits_non_zero_with_one_line(tmp_path):
    job = write_job(tmp_path, inputs=[{"geotiff": "data/missing.tif"}])
    result = CliRunner().invoke(cli, ["run", str(job)])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "missing.tif" in result.output

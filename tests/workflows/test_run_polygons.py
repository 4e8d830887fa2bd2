"""polygons.parquet as a dataset: one GeoParquet file per scene, written as the scene finishes, with the same schema
and CRS in every part (an empty scene's too), read as one table by GeoPandas, pyarrow and DuckDB; each file
streamed from the tile sidecars so the client's memory does not grow with a scene's polygons."""

import json
import subprocess
import sys
import warnings

import duckdb
import geopandas as gpd
import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import rioxarray  # noqa: F401
import xarray as xr
from distributed import LocalCluster
from scipy import ndimage

from rsrs.pipeline.geoparquet import SCHEMA
from rsrs.workflows.run import run_job
from tests.rasters import write_geotiff
from tests.workflows.runs import write_dense_tiles, write_job


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run over a scene with polygons and a scene without valid pixels (no polygons)."""
    folder = tmp_path_factory.mktemp("run")
    job = write_job(folder, scenes={"a": (72, 96)}, output={"dir": "out", "threshold": 0.49, "vector_crs": "EPSG:3857"})
    write_geotiff(folder / "data" / "empty.tif", shape=(48, 48), nodata=0, data=np.zeros((3, 48, 48), np.uint8))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        report = run_job(job, scheduler=cluster.scheduler_address)
    return folder / "out", report


def test_every_scene_has_a_file_with_the_same_schema_and_crs_even_without_polygons(finished):
    out, report = finished
    parts = sorted((out / "polygons.parquet").iterdir())
    assert [p.name for p in parts] == ["a.parquet", "empty.parquet"]
    assert {s["id"]: s["polygons"] for s in report["scenes"]} == {"a": 2, "empty": 0}
    schemas = [pq.read_schema(p) for p in parts]
    assert all(s.remove_metadata() == SCHEMA for s in schemas)
    geo = [json.loads(s.metadata[b"geo"]) for s in schemas]
    assert all(g["version"] == "1.1.0" and g["columns"]["geometry"]["crs"]["id"]["code"] == 3857 for g in geo)
    assert pq.ParquetFile(parts[1]).metadata.num_rows == 0


def test_the_folder_reads_as_one_table_in_geopandas_pyarrow_and_duckdb(finished):
    out, _ = finished
    frame = gpd.read_parquet(out / "polygons.parquet")
    assert list(frame.columns) == ["scene_id", "query_id", "query", "score", "area_m2", "geometry"]
    assert frame.crs == "EPSG:3857" and sorted(frame.scene_id) == ["a", "a"]
    assert ds.dataset(out / "polygons.parquet").to_table().num_rows == 2
    rows = duckdb.sql(f"select scene_id, count(*) from read_parquet('{out}/polygons.parquet/*.parquet') group by 1")
    assert rows.fetchall() == [("a", 2)]


def test_a_scene_file_streamed_in_batches_merges_every_object_cut_by_core_borders(tmp_path, monkeypatch):
    from rsrs.workflows import run_polygons

    monkeypatch.setattr(run_polygons, "BATCH_ROWS", 500)  # several row groups per scene
    job = write_job(tmp_path, scenes={"dense": (240, 240)}, queries=["squares"],
                    tiling={"tile_size": 88, "overlap": 8, "batch_size": 1})  # fmt: skip
    write_dense_tiles(job, pitch=6, size=4)  # 4 px squares, some straddling the core borders (multiples of 72)
    report = run_job(job)  # every tile done: no cluster, only the polygon step
    ny = nx = 240
    rows, cols = (np.arange(ny) + 1) % 6 < 4, (np.arange(nx) + 1) % 6 < 4
    _, objects = ndimage.label(rows[:, None] & cols[None, :])
    frame = gpd.read_parquet(tmp_path / "out" / "polygons.parquet")
    assert report["totals"]["polygons"] == len(frame) == objects  # no square left in pieces
    assert pq.ParquetFile(tmp_path / "out" / "polygons.parquet" / "dense.parquet").num_row_groups > 2


PEAK_RSS = "import resource, sys\nfrom rsrs.workflows.run import run_job\nrun_job(sys.argv[1])\n" \
           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"  # fmt: skip


def peak_rss_kib(job) -> int:
    """The peak RSS of a client process running ``job`` (KiB)."""
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(job)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


@pytest.mark.slow
def test_client_memory_for_a_scene_of_100000_polygons_stays_within_1_3_of_a_scene_of_100(tmp_path):
    """Both scenes 960 x 960 px in 16 tiles, every tile done (sidecars of small squares): the client only streams
    the polygons into polygons.parquet/, measured in its own process."""
    peaks, counts = {}, {}
    for name, pitch in (("sparse", 96), ("dense", 3)):
        job = write_job(tmp_path / name, scenes={name: (960, 960)}, queries=["squares"],
                        tiling={"tile_size": 264, "overlap": 12, "batch_size": 1})  # fmt: skip
        write_dense_tiles(job, pitch=pitch, size=2)
        peaks[name] = peak_rss_kib(job)
        counts[name] = len(gpd.read_parquet(tmp_path / name / "out" / "polygons.parquet"))
    assert counts["dense"] >= 100_000 and counts["sparse"] <= 121
    print(f"peak RSS: {peaks} KiB for {counts} polygons; ratio {peaks['dense'] / peaks['sparse']:.3f}")
    assert peaks["dense"] <= 1.3 * peaks["sparse"]


def test_the_mosaic_store_is_indexed_once_at_the_end_and_opens_as_users_open_it_without_warnings(finished):
    out, _ = finished
    index = json.loads((out / "masks.zarr" / ".zmetadata").read_text())  # Zarr format 2's consolidated metadata
    assert {"a", "empty"} <= {key.split("/")[0] for key in index["metadata"]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "failed to open consolidated metadata" fallback
        ds = xr.open_zarr(out / "masks.zarr", group="a", decode_coords="all")
    assert ds["probability"].shape == (2, 72, 96) and ds.rio.crs == "EPSG:32614"

"""`rsrs export RUN_DIR --cog`: the COGs of a finished run, where and how they are written, and its errors."""

import json

import numpy as np
import pytest
import rasterio
import yaml
from click.testing import CliRunner

from rsrs.pipeline.mosaic import open_mosaic
from rsrs.workflows.cli import cli
from rsrs.workflows.export import export_cogs
from tests.mosaics import GRIDS, write_mosaic
from tests.rasters import write_geotiff

QUERIES = [{"id": "ponds", "text": "the dark ponds"}, {"id": "roofs", "text": "red-roofed buildings"}]


def write_run(folder, *, dry_run: bool = False) -> dict:
    """A finished run as `rsrs run` leaves it (the parts export reads): two done scenes, one failed."""
    codes = {
        "a": write_mosaic(folder / "masks.zarr", "a", GRIDS["utm"], seed=1),
        "b": write_mosaic(folder / "masks.zarr", "b", GRIDS["wgs84"], seed=2),
    }
    report = {
        "job": {"queries": QUERIES},
        "dry_run": dry_run,
        "outputs": {"masks": "masks.zarr", "polygons": "polygons.parquet"},
        "scenes": [
            {"id": "a", "source": "data/a.tif", "status": "done"},
            {"id": None, "source": "data/broken.tif", "status": "failed", "error": "cannot read"},
            {"id": "b", "source": "data/b.tif", "status": "done"},
        ],
    }
    (folder / "run.json").write_text(json.dumps(report))
    return codes


def test_export_writes_one_cog_per_finished_scene_and_query(tmp_path):
    codes = write_run(tmp_path)
    result = CliRunner().invoke(cli, ["export", str(tmp_path), "--cog"])
    assert result.exit_code == 0, result.output
    assert "4 COG(s) written, 0 already current" in result.output
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "cogs").rglob("*")) == [
        "cogs/a", "cogs/a/ponds.tif", "cogs/a/roofs.tif", "cogs/b", "cogs/b/ponds.tif", "cogs/b/roofs.tif"
    ]  # fmt: skip
    for scene, grid in (("a", GRIDS["utm"]), ("b", GRIDS["wgs84"])):
        for q, query in enumerate(QUERIES):
            with rasterio.open(tmp_path / "cogs" / scene / f"{query['id']}.tif") as src:
                np.testing.assert_array_equal(src.read(1), codes[scene][q])
                assert src.transform == grid.transform and src.tags()["query"] == query["text"]


def test_rerun_keeps_current_cogs(tmp_path):
    write_run(tmp_path)
    first = export_cogs(tmp_path, progress=False)
    stamps = {p: p.stat().st_mtime_ns for paths in first.paths.values() for p in paths.values()}
    again = export_cogs(tmp_path, progress=False)
    assert (first.written, first.kept, again.written, again.kept) == (4, 0, 0, 4)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_folder_that_is_not_a_run_is_one_error_line(tmp_path):
    runner = CliRunner()
    for args, message in [
        ([str(tmp_path / "nowhere"), "--cog"], "is not an rsrs run folder (no run.json); give the output.dir"),
        ([str(tmp_path), "--cog"], "is not an rsrs run folder (no run.json)"),
    ]:
        result = runner.invoke(cli, ["export", *args])
        assert result.exit_code == 1
        assert result.output.count("\n") == 1 and message in result.output, result.output
    (tmp_path / "run.json").write_text('{"scenes": []}')
    result = runner.invoke(cli, ["export", str(tmp_path), "--cog"])
    assert result.exit_code == 1 and "is not an rsrs run report (KeyError" in result.output
    assert result.output.count("\n") == 1


def test_a_dry_run_or_a_run_without_finished_scenes_says_to_run_first(tmp_path):
    write_run(tmp_path, dry_run=True)
    result = CliRunner().invoke(cli, ["export", str(tmp_path), "--cog"])
    assert result.exit_code == 1 and "is from `rsrs run --dry-run`" in result.output
    report = json.loads((tmp_path / "run.json").read_text())
    report |= {"dry_run": False, "scenes": [s | {"status": "failed"} for s in report["scenes"]]}
    (tmp_path / "run.json").write_text(json.dumps(report))
    result = CliRunner().invoke(cli, ["export", str(tmp_path), "--cog"])
    assert result.exit_code == 1 and "no finished scene in" in result.output


def test_without_a_format_export_says_which_to_choose(tmp_path):
    write_run(tmp_path)
    result = CliRunner().invoke(cli, ["export", str(tmp_path)])
    assert result.exit_code == 2 and "nothing to export; add --cog" in result.output
    assert not (tmp_path / "cogs").exists()


def test_help_teaches_layout_encoding_and_how_to_open():
    result = CliRunner().invoke(cli, ["export", "--help"])
    assert result.exit_code == 0
    for text in ("RUN_DIR/cogs/<scene_id>/<query_id>.tif", "nodata 255", "1/254", "QGIS", "gdalinfo", "rasterio"):
        assert text in result.output
    assert "export" in CliRunner().invoke(cli, ["--help"]).output


@pytest.mark.slow
def test_export_of_a_real_run_matches_its_mosaics(tmp_path):
    """End to end (a Dask cluster and the tiny model: slow): `rsrs run` on a small GeoTIFF, then `rsrs export --cog`.

    Guards the contract with run.json as `rsrs run` really writes it.
    """
    write_geotiff(tmp_path / "scene.tif", shape=(48, 64), nodata=0, seed=3)
    job = {
        "inputs": [{"geotiff": "scene.tif"}],
        "queries": QUERIES,
        "model": {"preset": "tiny", "device": "cpu"},
        "tiling": {"tile_size": 32, "overlap": 4, "batch_size": 4},
        "output": {"dir": "out"},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    runner = CliRunner()
    assert runner.invoke(cli, ["run", str(tmp_path / "job.yaml")]).exit_code == 0
    result = runner.invoke(cli, ["export", str(tmp_path / "out"), "--cog"])
    assert result.exit_code == 0, result.output
    probability = open_mosaic(tmp_path / "out" / "masks.zarr", "scene")["probability"]
    for query in QUERIES:
        with rasterio.open(tmp_path / "out" / "cogs" / "scene" / f"{query['id']}.tif") as src:
            probs = src.read(1, masked=True).astype(np.float64) * src.scales[0]
            np.testing.assert_array_equal(probs.filled(np.nan), probability.sel(query=query["id"]).values)
            assert src.crs == probability.rio.crs

import os
import pickle
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import rasterio

from rsrs.core.errors import InputDataError
from rsrs.pipeline.scaling import ScalingSpec
from rsrs.pipeline.scenes import (
    SceneNotFoundError,
    SceneReadError,
    deduplicate_ids,
    expand_paths,
    gdal_path,
    read_from_local_files,
    safe_id,
    scene_from_raster,
    scenes_from_paths,
)
from tests.rasters import invalid_region, write_band_files, write_geotiff
from tests.servers import range_file_server


def test_scene_records_grid_crs_bands_and_nodata(tmp_path):
    path = write_geotiff(tmp_path / "a.tif", shape=(120, 90), crs="EPSG:32614", res=2.0, nodata=0)
    scene = scene_from_raster(str(path))
    with rasterio.open(path) as ds:
        assert scene.grid.shape == (120, 90)
        assert scene.grid.transform == ds.transform
        assert scene.grid.crs == "EPSG:32614"
    assert [b.band for b in scene.bands] == [1, 2, 3]
    assert scene.id == "a"
    assert scene.dtype == "uint8"
    assert scene.nodata == "nodata=0"
    assert scene.scaling == ((0.0, 255.0),) * 3  # uint8 is used as is by default


def test_scene_is_small_and_picklable(tmp_path):
    scene = scene_from_raster(str(write_geotiff(tmp_path / "a.tif")))
    data = pickle.dumps(scene)
    assert pickle.loads(data) == scene
    assert len(data) < 2000


@pytest.mark.parametrize(("kwargs", "kind"), [({"alpha": True}, "alpha band"), ({"mask": True}, "internal mask")])
def test_alpha_and_mask_are_reported_and_not_used_as_bands(tmp_path, kwargs, kind):
    scene = scene_from_raster(str(write_geotiff(tmp_path / "a.tif", **kwargs)))
    assert scene.nodata == kind
    assert [b.band for b in scene.bands] == [1, 2, 3]


def test_single_band_is_repeated_as_rgb(tmp_path):
    scene = scene_from_raster(str(write_geotiff(tmp_path / "pan.tif", count=1, dtype="uint16")))
    assert [b.band for b in scene.bands] == [1, 1, 1]
    assert len(set(scene.scaling)) == 1


def test_explicit_bands_are_used_in_order(tmp_path):
    scene = scene_from_raster(str(write_geotiff(tmp_path / "a.tif", count=4)), bands=[4, 3, 2])
    assert [b.band for b in scene.bands] == [4, 3, 2]


def test_percentile_scaling_comes_from_valid_pixels_of_overviews(tmp_path):
    path = write_geotiff(tmp_path / "a.tif", shape=(512, 512), dtype="uint16", nodata=0, overviews=True)
    scene = scene_from_raster(str(path))
    with rasterio.open(path) as ds:
        band = ds.read(1)[~invalid_region(ds.shape)]
    lo, hi = scene.scaling[0]
    full_lo, full_hi = np.percentile(band, [2, 98])
    span = float(band.max() - band.min())
    assert abs(lo - full_lo) < 0.02 * span and abs(hi - full_hi) < 0.02 * span  # decimated, close
    assert lo > 0  # nodata pixels were left out


def test_range_and_minmax_scaling(tmp_path):
    path = str(write_geotiff(tmp_path / "a.tif", dtype="uint16"))
    fixed = scene_from_raster(path, scaling=ScalingSpec(method="range", value_range=(0, 3000)))
    assert fixed.scaling == ((0.0, 3000.0),) * 3
    minmax = scene_from_raster(path, scaling=ScalingSpec(method="minmax"))
    with rasterio.open(path) as ds:
        data = ds.read()
    assert minmax.scaling == tuple((float(b.min()), float(b.max())) for b in data)


def test_assets_at_different_resolutions_take_the_finest_grid(tmp_path):
    from rsrs.pipeline.scenes import BandSource, scene_from_sources

    paths = write_band_files(tmp_path, shape=(100, 100), res=10.0)
    scene = scene_from_sources("s2", [BandSource(str(p), 1) for p in paths], scaling=ScalingSpec(), source="test")
    assert scene.grid.shape == (100, 100)
    assert scene.grid.resolution == (10.0, 10.0)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(SceneNotFoundError, match="nope.tif"):
        scene_from_raster(str(tmp_path / "nope.tif"))


def test_corrupt_tiff_is_a_read_error(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(SceneReadError, match="cannot read .*bad.tif"):
        scene_from_raster(str(bad))


def test_truncated_tiff_fails_when_its_pixels_are_read(tmp_path):
    good = write_geotiff(tmp_path / "good.tif", dtype="uint16", shape=(512, 512), tiled=True)
    bad = tmp_path / "cut.tif"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SceneReadError, match="cut.tif"):
        scene_from_raster(str(bad))  # percentile statistics read the pixels


def test_raster_without_crs_says_to_assign_one(tmp_path):
    path = write_geotiff(tmp_path / "nocrs.tif", crs=None)
    with pytest.raises(SceneReadError, match="no CRS"):
        scene_from_raster(str(path))


def test_band_beyond_count_names_the_count(tmp_path):
    path = write_geotiff(tmp_path / "a.tif", count=3)
    with pytest.raises(InputDataError, match="band 5 requested .* has 3 band"):
        scene_from_raster(str(path), bands=[5, 2, 1])


def test_two_band_raster_without_rgb_needs_bands(tmp_path):
    path = write_geotiff(tmp_path / "a.tif", count=2)
    with pytest.raises(SceneReadError, match="bands"):
        scene_from_raster(str(path))


def test_globs_expand_sorted_and_empty_globs_fail(tmp_path):
    for name in ("b", "a", "c"):
        write_geotiff(tmp_path / f"{name}.tif", shape=(40, 40))
    assert [s.id for s in scenes_from_paths(str(tmp_path / "*.tif"))] == ["a", "b", "c"]
    with pytest.raises(SceneNotFoundError, match="no files match"):
        expand_paths(str(tmp_path / "*.jp2"))


def test_ids_are_safe_and_deduplicated(tmp_path):
    assert safe_id("my scene:2020/01 (v2)") == "my_scene_2020_01_v2"
    (tmp_path / "x").mkdir()
    scenes = [
        scene_from_raster(str(write_geotiff(tmp_path / "s.tif", shape=(40, 40)))),
        scene_from_raster(str(write_geotiff(tmp_path / "x" / "s.tif", shape=(40, 40)))),
    ]
    assert [s.id for s in deduplicate_ids(scenes + scenes[:1])] == ["s", "s-2", "s-3"]


def test_urls_map_to_gdal_virtual_file_systems():
    assert gdal_path("https://h/x.tif") == "/vsicurl/https://h/x.tif"
    assert gdal_path("s3://bucket/k/x.tif") == "/vsis3/bucket/k/x.tif"
    assert gdal_path("file:///data/x.tif") == "/data/x.tif"
    assert gdal_path("data/x.tif") == "data/x.tif"


def test_a_scene_reads_from_local_files_only_when_every_band_is_one(tmp_path):
    local = scene_from_raster(str(write_geotiff(tmp_path / "s.tif", shape=(40, 40))))
    assert read_from_local_files(local)
    for href in ("https://h/x.tif", "s3://bucket/x.tif"):
        remote_band = replace(local.bands[0], href=gdal_path(href))
        assert not read_from_local_files(replace(local, bands=(local.bands[0], remote_band, local.bands[2])))


def test_cog_over_http_with_range_requests(tmp_path):
    path = write_geotiff(tmp_path / "cog.tif", shape=(600, 700), dtype="uint16", overviews=True, blocksize=256)
    local = scene_from_raster(str(path))
    with range_file_server(tmp_path) as url:
        remote = scene_from_raster(f"{url}/cog.tif")
        missing = f"{url}/missing.tif"
        with pytest.raises(SceneNotFoundError, match="missing.tif"):
            scene_from_raster(missing)
    assert remote.bands[0].href.startswith("/vsicurl/http://127.0.0.1")
    assert remote.id == "cog"
    assert (remote.grid, remote.scaling) == (local.grid, local.scaling)


def test_gdal_decoding_threads_default_to_the_cores_unless_the_environment_sets_them():
    """A user (or a benchmark sweep) limits GDAL's decoding pool with GDAL's own variable."""
    show = "from rsrs.pipeline.scenes import GDAL_ENV; print(GDAL_ENV['GDAL_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k != "GDAL_NUM_THREADS"}
    default = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True)
    assert default.stdout.strip() == str(os.cpu_count())
    env["GDAL_NUM_THREADS"] = "3"
    chosen = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True)
    assert chosen.stdout.strip() == "3"

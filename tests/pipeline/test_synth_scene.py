"""Large synthetic scenes: a georeferenced GeoTIFF, expressions, true masks on the same grid, polygons."""

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize

from rsrs.pipeline.synth import write_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("scene")
    write_scene(out, size=600, seed=4, block=256)  # 600 is not a multiple of the block: a partial last strip
    return out


def test_scene_is_a_tiled_projected_rgb_geotiff(scene):
    with rasterio.open(scene / "scene.tif") as src:
        assert (src.count, src.height, src.width, src.dtypes[0]) == (3, 600, 600, "uint8")
        assert src.crs.to_epsg() == 32614 and src.res == (0.5, 0.5)
        assert src.profile["tiled"] and src.profile["blockxsize"] == 256 and src.compression.value == "DEFLATE"
        pixels = src.read()
    assert pixels.std() > 10  # textured, not flat


def test_masks_share_the_scene_grid_and_cover_only_their_targets(scene):
    expressions = json.loads((scene / "expressions.json").read_text())
    objects = gpd.read_file(scene / "objects.geojson").set_index("id")
    with rasterio.open(scene / "scene.tif") as src:
        grid = (src.transform, src.crs, src.shape)
    assert {e["form"] for e in expressions} >= {"plural"}
    for e in expressions:
        with rasterio.open(scene / "masks" / f"{e['id']}.tif") as m:
            assert (m.transform, m.crs, m.shape) == grid
            mask = m.read(1)
        assert set(np.unique(mask)) == {0, 1}, e["text"]
        polygons = objects.loc[e["targets"]].geometry
        footprint = rasterize(polygons, out_shape=grid[2], transform=grid[0], all_touched=True).astype(bool)
        assert not (mask.astype(bool) & ~footprint).any(), e["text"]
        assert mask.sum() > 0.8 * rasterize(polygons, out_shape=grid[2], transform=grid[0]).sum() - 50, e["text"]


def test_objects_record_attributes_and_the_expressions_naming_them(scene):
    expressions = json.loads((scene / "expressions.json").read_text())
    objects = gpd.read_file(scene / "objects.geojson")
    assert objects.crs.to_epsg() == 32614
    assert {"id", "category", "colour", "area_m2", "expressions"} <= set(objects.columns)
    np.testing.assert_allclose(objects.geometry.area, objects.area_m2, rtol=1e-3)
    named = {(e["id"], t) for e in expressions for t in e["targets"]}
    recorded = {
        (eid, oid) for oid, ids in zip(objects.id, objects.expressions, strict=True) for eid in ids.split(",") if eid
    }
    assert named == recorded


def test_a_large_scene_offers_one_target_expressions(tmp_path):
    write_scene(tmp_path, size=1024, seed=0)
    forms = {e["form"] for e in json.loads((tmp_path / "expressions.json").read_text())}
    assert "size" in forms  # the lake makes "the largest pond"

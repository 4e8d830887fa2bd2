import json

import duckdb
import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import shapely
from affine import Affine
from rasterio import features
from scipy import ndimage

from rsrs.pipeline.geometry import PixelWindow, RasterGrid
from rsrs.pipeline.mosaic import decode_probability, encode_probability
from rsrs.pipeline.polygons import (
    area_m2,
    empty_frame,
    load_tile,
    merge_tiles,
    polygon_frame,
    polygonise_codes,
    save_tile,
    write_geoparquet,
)
from rsrs.pipeline.tiling import plan_tiles

GRID = RasterGrid(shape=(64, 64), transform=Affine(2.0, 0, 500000.0, 0, -2.0, 4100000.0), crs="EPSG:32614")


def _disc_field(shape, centre, radius, seed=0):
    """(1, ny, nx) probabilities as stored (multiples of 1/254): a disc of 0.6..1 on a background of 0..0.4."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    inside = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    probs = np.where(inside, 0.6 + 0.4 * rng.random(shape), 0.4 * rng.random(shape))[None]
    return decode_probability(encode_probability(probs, np.ones(shape, bool))), inside


def _tile_polygons(probs, valid, tiles, threshold=0.5):
    out = []
    for tile in tiles:
        rows, cols = tile.core.slices()
        out.append(
            polygonise_codes(
                encode_probability(probs[:, rows, cols], valid[rows, cols]), key=tile.key, core=tile.core,
                scene_shape=GRID.shape, threshold=threshold,
            )
        )  # fmt: skip
    return out


def test_object_spanning_four_tiles_comes_out_as_one_polygon_with_exact_score():
    probs, inside = _disc_field(GRID.shape, centre=(32, 32), radius=12)
    valid = np.ones(GRID.shape, bool)
    tiles = plan_tiles(GRID, tile_size=32, overlap=0)  # 2 x 2 cores of 32, disc on their shared corner
    parts = _tile_polygons(probs, valid, tiles)
    assert sum(len(p) for p in parts) == 4 and all(p.on_edge.all() for p in parts)
    merged = merge_tiles(parts)
    assert len(merged) == 1
    geom = merged.geometry[0]
    assert geom.geom_type == "Polygon" and geom.is_valid
    assert geom.area == inside.sum() == merged.n_pixels[0]
    assert merged.prob_sum[0] == pytest.approx(probs[0][inside].sum())


def test_merging_agrees_with_polygonising_the_whole_scene_at_once():
    rng = np.random.default_rng(3)
    probs = rng.random((2, *GRID.shape)) ** 3 * 2  # blobs of all shapes, two queries
    valid = rng.random(GRID.shape) > 0.05
    whole = polygonise_codes(encode_probability(probs, valid), key="all", core=GRID.full_window(),
                             scene_shape=GRID.shape, threshold=0.5)  # fmt: skip
    merged = merge_tiles(_tile_polygons(probs, valid, plan_tiles(GRID, tile_size=20, overlap=0)))
    assert len(merged) == len(whole)
    for q in range(2):
        a = shapely.normalize(shapely.union_all(merged.geometry[merged.query == q]))
        b = shapely.normalize(shapely.union_all(whole.geometry[whole.query == q]))
        assert a.equals(b)
        assert sorted(merged.n_pixels[merged.query == q]) == sorted(whole.n_pixels[whole.query == q])


def test_small_objects_inside_a_core_equal_gdal_polygonising_the_whole_core():
    """Polygonising works on the objects' bounding box; the polygons, pixel counts and scores are the whole core's."""
    core = PixelWindow(row_off=40, col_off=24, height=24, width=40)  # not at the scene's origin
    probs = np.zeros((2, 24, 40))
    probs[0, 5:9, 10:13] = 0.9  # two objects well inside the core, one with a hole
    probs[0, 12:18, 20:27] = 0.8
    probs[0, 14:16, 22:24] = 0.1
    probs[1, 20:24, 0:3] = 0.7  # on the core's corner
    codes = encode_probability(probs, np.ones((24, 40), bool))
    got = polygonise_codes(codes, key="k", core=core, scene_shape=(64, 64), threshold=0.5)
    for q in range(2):
        mask = decode_probability(codes[q]) > 0.5
        labels, _ = ndimage.label(mask)
        to_scene = Affine.translation(core.col_off, core.row_off)
        shapes = list(features.shapes(labels, mask=mask, connectivity=4, transform=to_scene))
        expected = {shapely.normalize(shapely.geometry.shape(g)).wkt: int(v) for g, v in shapes}
        mine = got.query == q
        assert {shapely.normalize(g).wkt for g in got.geometry[mine]} == set(expected)
        for geom, n, score in zip(got.geometry[mine], got.n_pixels[mine], got.prob_sum[mine], strict=True):
            region = labels == expected[shapely.normalize(geom).wkt]
            assert n == region.sum() and score == pytest.approx(decode_probability(codes[q])[region].sum())
    assert got.geometry[got.query == 0][0].interiors or got.geometry[got.query == 0][1].interiors  # the hole kept


def test_corner_contact_across_tiles_is_not_merged():
    probs = np.zeros((1, *GRID.shape))
    probs[0, 30:32, 30:32] = 1.0  # top-left core's corner
    probs[0, 32:34, 32:34] = 1.0  # bottom-right core's corner: touches diagonally only
    merged = merge_tiles(_tile_polygons(probs, np.ones(GRID.shape, bool), plan_tiles(GRID, tile_size=32, overlap=0)))
    assert len(merged) == 2


def test_invalid_pixels_are_never_inside_a_polygon():
    probs = np.ones((1, *GRID.shape))
    valid = np.ones(GRID.shape, bool)
    valid[:, :10] = False
    (tile,) = _tile_polygons(probs, valid, plan_tiles(GRID, tile_size=64, overlap=0))
    assert len(tile) == 1 and tile.n_pixels[0] == valid.sum()
    assert shapely.bounds(tile.geometry[0])[0] == 10


def test_frame_columns_area_filter_and_output_crs():
    probs, inside = _disc_field(GRID.shape, centre=(20, 20), radius=8)
    probs[0, 50:52, 50:52] = 0.9  # a 4-pixel speck: 16 m²
    merged = merge_tiles(_tile_polygons(probs, np.ones(GRID.shape, bool), plan_tiles(GRID, tile_size=32, overlap=0)))
    frame = polygon_frame(
        merged, scene_id="s1", grid=GRID, query_ids=["disc"], query_texts=["the disc"], min_area_m2=20.0,
        vector_crs="EPSG:4326",
    )  # fmt: skip
    assert list(frame.columns) == ["scene_id", "query_id", "query", "score", "area_m2", "geometry"]
    assert len(frame) == 1 and frame.crs == "EPSG:4326"
    row = frame.iloc[0]
    assert (row.scene_id, row.query_id, row.query) == ("s1", "disc", "the disc")
    assert row.area_m2 == pytest.approx(inside.sum() * 4.0 / 0.9996**2)  # on the ground: UTM's scale is 0.9996 here
    assert row.score == pytest.approx(probs[0][inside].mean())
    assert frame.to_crs(GRID.crs).geometry.iloc[0].area == pytest.approx(inside.sum() * 4.0, rel=1e-6)


def test_geographic_area_is_geodesic():
    square = shapely.box(0.0, 0.0, 0.01, 0.01)  # ~1.11 km x 1.11 km at the equator
    assert area_m2(np.array([square]), "EPSG:4326")[0] == pytest.approx(1.2308e6, rel=1e-3)


def test_geoparquet_has_version_projjson_crs_and_bbox_covering(tmp_path):
    probs, _ = _disc_field(GRID.shape, centre=(20, 20), radius=8)
    merged = merge_tiles(_tile_polygons(probs, np.ones(GRID.shape, bool), plan_tiles(GRID, tile_size=64, overlap=0)))
    frame = polygon_frame(merged, scene_id="s1", grid=GRID, query_ids=["d"], query_texts=["d"], min_area_m2=0,
                          vector_crs="EPSG:4326")  # fmt: skip
    path = tmp_path / "polygons.parquet"
    write_geoparquet(frame, path)
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["version"] == "1.1.0"
    column = geo["columns"]["geometry"]
    assert column["crs"]["id"] == {"authority": "EPSG", "code": 4326}
    assert set(column["covering"]["bbox"]) == {"xmin", "ymin", "xmax", "ymax"}
    back = gpd.read_parquet(path)
    assert back.crs == "EPSG:4326" and back.geometry.iloc[0].equals_exact(frame.geometry.iloc[0], 0)
    assert [p.name for p in tmp_path.iterdir()] == ["polygons.parquet"]  # no temp file left behind


def test_empty_frame_writes_a_valid_file(tmp_path):
    write_geoparquet(empty_frame("EPSG:4326"), tmp_path / "p.parquet")
    back = gpd.read_parquet(tmp_path / "p.parquet")
    assert len(back) == 0 and back.crs == "EPSG:4326" and "score" in back


def test_an_empty_and_a_full_file_read_as_one_dataset(tmp_path):
    """A run without polygons writes string columns as strings (not Arrow null), so readers can union its file."""
    probs, _ = _disc_field(GRID.shape, centre=(20, 20), radius=8)
    merged = merge_tiles(_tile_polygons(probs, np.ones(GRID.shape, bool), plan_tiles(GRID, tile_size=64, overlap=0)))
    full = polygon_frame(merged, scene_id="s1", grid=GRID, query_ids=["d"], query_texts=["the disc"], min_area_m2=0,
                         vector_crs="EPSG:4326")  # fmt: skip
    paths = [tmp_path / "a-empty.parquet", tmp_path / "b-full.parquet"]  # the empty one first: its schema leads
    write_geoparquet(empty_frame("EPSG:4326"), paths[0])
    write_geoparquet(full, paths[1])
    schemas = [pq.read_schema(path) for path in paths]
    assert [(f.name, f.type) for f in schemas[0]] == [(f.name, f.type) for f in schemas[1]]
    expected = {"scene_id": pa.string(), "query_id": pa.string(), "query": pa.string(), "score": pa.float64(),
                "area_m2": pa.float64(), "geometry": pa.binary()}  # fmt: skip
    assert {name: schemas[0].field(name).type for name in expected} == expected
    table = ds.dataset([str(path) for path in paths], format="parquet").to_table()
    assert table.column("query").to_pylist() == ["the disc"]
    rows = duckdb.sql(f"SELECT scene_id, query_id, query, score FROM read_parquet({[str(p) for p in paths]})")
    assert rows.fetchall() == [("s1", "d", "the disc", pytest.approx(full.score.iloc[0]))]
    for path, frame in zip(paths, [empty_frame("EPSG:4326"), full], strict=True):
        back = gpd.read_parquet(path)
        assert list(back.columns) == list(frame.columns) and len(back) == len(frame) and back.crs == "EPSG:4326"


def test_tile_sidecar_round_trips_exactly(tmp_path):
    probs, _ = _disc_field(GRID.shape, centre=(32, 32), radius=12)
    tile = _tile_polygons(probs, np.ones(GRID.shape, bool), plan_tiles(GRID, tile_size=32, overlap=0))[0]
    save_tile(tile, tmp_path / "t.parquet")
    back = load_tile(tmp_path / "t.parquet")
    assert back.key == tile.key and not back.skipped
    for name in ("query", "prob_sum", "n_pixels", "on_edge"):
        np.testing.assert_array_equal(getattr(back, name), getattr(tile, name))
    assert all(a.equals_exact(b, 0) for a, b in zip(back.geometry, tile.geometry, strict=True))

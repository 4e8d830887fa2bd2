import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from rasterio.crs import CRS

from rsrs.core.errors import ConfigError
from rsrs.pipeline.geometry import RasterGrid
from rsrs.pipeline.mosaic import (
    FILL,
    SCALE,
    VARIABLE,
    create_mosaic,
    decode_probability,
    encode_probability,
    open_mosaic,
    write_core,
)
from rsrs.pipeline.tiling import plan_tiles

GRID = RasterGrid(shape=(150, 110), transform=Affine(0.5, 0, 500000.0, 0, -0.5, 4100000.0), crs="EPSG:32614")


def _field(seed: int, shape: tuple[int, int], q: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).random((q, *shape), dtype=np.float32)


def _create(store, grid=GRID, fingerprint="f1", source="a/s1.tif"):
    return create_mosaic(
        store,
        "s1",
        grid,
        query_ids=["a", "b"],
        query_texts=["an a", "a b"],
        chunk_size=32,
        fingerprint=fingerprint,
        source=source,
    )


def test_mosaic_decodes_the_written_cores_with_nan_where_invalid(tmp_path):
    store = tmp_path / "masks.zarr"
    assert _create(store)
    truth = _field(0, GRID.shape)  # (Q, ny, nx)
    valid = np.ones(GRID.shape, bool)
    valid[:, :20] = False
    tiles = plan_tiles(GRID, tile_size=48, overlap=8)
    for tile in tiles:
        rows, cols = tile.core.slices()
        write_core(store, "s1", tile.core, encode_probability(truth[:, rows, cols], valid[rows, cols]))
    prob = open_mosaic(store, "s1")["probability"].values  # (Q, ny, nx)
    assert prob.shape == (2, *GRID.shape)
    assert np.isnan(prob[:, ~valid]).all()
    np.testing.assert_allclose(prob[:, valid], truth[:, valid], atol=0.5 / 254 + 1e-6)


def test_unwritten_chunks_read_as_nan(tmp_path):
    store = tmp_path / "masks.zarr"
    _create(store)
    assert np.isnan(open_mosaic(store, "s1")["probability"].values).all()


@pytest.mark.parametrize("crs", ["EPSG:32614", "EPSG:3857", "EPSG:4326"])
def test_crs_and_transform_round_trip_through_xarray_and_rioxarray(tmp_path, crs):
    grid = RasterGrid(shape=GRID.shape, transform=Affine(0.25, 0, 12.5, 0, -0.125, 48.0), crs=crs)
    store = tmp_path / "masks.zarr"
    _create(store, grid)
    ds = open_mosaic(store, "s1")
    assert ds["probability"].rio.crs == CRS.from_user_input(crs)
    assert ds["probability"].rio.transform().almost_equals(grid.transform, precision=1e-12)
    assert list(ds["query"].values) == ["a", "b"]
    assert list(ds["query_text"].values) == ["an a", "a b"]


def test_encoding_is_uint8_with_scale_and_fill(tmp_path):
    store = tmp_path / "masks.zarr"
    _create(store)
    enc = open_mosaic(store, "s1")["probability"].encoding
    assert enc["dtype"] == np.uint8 and enc["_FillValue"] == 255
    assert enc["grid_mapping"] == "spatial_ref"
    codes = encode_probability(np.array([[[0.0, 1.0, 0.5]]]), np.array([[True, True, False]]))
    assert codes.tolist() == [[[0, 254, 255]]]
    assert np.isnan(decode_probability(codes)[0, 0, 2]) and decode_probability(codes)[0, 0, 1] == 1.0


def test_existing_group_is_kept_for_resume_and_rejected_for_another_job(tmp_path):
    store = tmp_path / "masks.zarr"
    assert _create(store)
    core = plan_tiles(GRID, tile_size=32, overlap=0).tile(0, 0).core
    write_core(store, "s1", core, np.full((2, 32, 32), 7, np.uint8))
    assert not _create(store)  # same fingerprint: kept, chunk survives
    assert (open_mosaic(store, "s1")["probability"].values[:, :32, :32] == 7 / 254).all()
    with pytest.raises(ConfigError, match="other settings.*--overwrite"):
        _create(store, fingerprint="other")


def test_a_scene_id_now_naming_another_file_says_which_files(tmp_path):
    store = tmp_path / "masks.zarr"
    assert _create(store)
    with pytest.raises(ConfigError, match=r"holds scene 's1' of a/s1.tif, but this job's scene 's1' is b/s1.tif"):
        _create(store, fingerprint="other", source="b/s1.tif")


@pytest.mark.parametrize(
    ("crs", "x_attrs", "y_attrs"),
    [
        ("EPSG:32614", ("projection_x_coordinate", "metre", "X"), ("projection_y_coordinate", "metre", "Y")),
        ("EPSG:3857", ("projection_x_coordinate", "metre", "X"), ("projection_y_coordinate", "metre", "Y")),
        ("EPSG:4326", ("longitude", "degrees_east", "X"), ("latitude", "degrees_north", "Y")),
    ],
)
def test_x_and_y_carry_cf_coordinate_attributes(tmp_path, crs, x_attrs, y_attrs):
    grid = RasterGrid(shape=GRID.shape, transform=Affine(0.25, 0, 12.5, 0, -0.125, 48.0), crs=crs)
    store = tmp_path / "masks.zarr"
    _create(store, grid)
    ds = open_mosaic(store, "s1")
    group = zarr.open_group(store, path="s1", mode="r")
    for name, (standard_name, units, axis) in {"x": x_attrs, "y": y_attrs}.items():
        for attrs in (ds[name].attrs, group[name].attrs):
            assert (attrs["standard_name"], attrs["units"], attrs["axis"]) == (standard_name, units, axis)
            assert attrs["long_name"]


def test_gdal_shows_the_query_ids_of_each_band(tmp_path):
    """GDAL's classic view of the array has a band per query, labelled by the query's id in its metadata."""
    with rasterio.Env() as env:
        if "Zarr" not in env.drivers():
            pytest.skip(f"GDAL {rasterio.__gdal_version__} has no Zarr driver")
    store = tmp_path / "masks.zarr"
    _create(store)
    core = plan_tiles(GRID, tile_size=32, overlap=0).tile(0, 0).core
    codes = np.stack([np.full((32, 32), 7, np.uint8), np.full((32, 32), 9, np.uint8)])
    write_core(store, "s1", core, codes)
    with rasterio.open(f'ZARR:"{store}":/s1/{VARIABLE}') as src:
        assert [src.tags(band)["DIM_query_VALUE"] for band in src.indexes] == ["a", "b"]
        assert src.crs == CRS.from_user_input(GRID.crs) and src.transform.almost_equals(GRID.transform)
        assert src.nodata == FILL and src.scales == (SCALE, SCALE)
        np.testing.assert_array_equal(src.read(window=((0, 32), (0, 32))), codes)
    ds = open_mosaic(store, "s1")  # and xarray still reads the ids as text
    assert list(ds["query"].values) == ["a", "b"] and list(ds["query_text"].values) == ["an a", "a b"]

"""COGs of probability mosaics: same values, grid and encoding as the Zarr, valid COG layout, bounded memory."""

import json
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rio_cogeo.cogeo import cog_validate

from rsrs.pipeline.cog import (
    FINGERPRINT_TAG,
    MosaicNotFoundError,
    cog_file_names,
    cog_sources,
    write_cog,
    write_scene_cogs,
)
from rsrs.pipeline.geometry import PixelWindow, RasterGrid
from rsrs.pipeline.mosaic import SCALE, create_mosaic, open_mosaic, write_core
from tests.mosaics import GRIDS, write_mosaic


@pytest.mark.parametrize("kind", sorted(GRIDS))
def test_cog_has_the_codes_crs_and_transform_of_the_zarr(tmp_path, kind):
    grid = GRIDS[kind]
    store = tmp_path / "masks.zarr"
    codes = write_mosaic(store, "s", grid, chunk_size=32)  # edge chunks are partial: 150 x 110 over 32 px
    paths = write_scene_cogs(store, "s", tmp_path / "cogs")
    decoded = open_mosaic(store, "s")["probability"]
    for q, (qid, path) in enumerate(paths.items()):
        with rasterio.open(path) as src:
            assert src.crs == CRS.from_user_input(grid.crs) == decoded.rio.crs
            assert src.transform == grid.transform
            np.testing.assert_array_equal(src.read(1), codes[q])
            # a reader applying scale/offset and the nodata mask gets xarray's probabilities
            probs = src.read(1, masked=True).astype(np.float64) * src.scales[0] + src.offsets[0]
            np.testing.assert_array_equal(probs.filled(np.nan), decoded.sel(query=qid).values)


def test_cog_is_valid_with_overviews_encoding_and_query_metadata(tmp_path):
    grid = RasterGrid((1100, 1300), Affine(10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0), "EPSG:32633")
    store = tmp_path / "masks.zarr"
    write_mosaic(store, "s", grid, chunk_size=400, fingerprint="abc")
    path = write_scene_cogs(store, "s", tmp_path / "cogs")["roofs"]
    valid, errors, warnings = cog_validate(str(path), strict=True, quiet=True)
    assert valid and errors == [] and warnings == []
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.overviews(1) == [2, 4]  # down to one 512 px block
        assert (src.dtypes[0], src.nodata, src.scales[0], src.offsets[0]) == ("uint8", 255, SCALE, 0.0)
        assert src.descriptions == ("roofs",)
        tags = src.tags()
        assert tags["query_id"] == "roofs" and tags["query"] == "red-roofed buildings"
        assert tags["scene_id"] == "s" and tags[FINGERPRINT_TAG] == "abc"


def test_overviews_average_valid_pixels_only(tmp_path):
    grid = RasterGrid((1024, 1024), Affine(1.0, 0.0, 0.0, 0.0, -1.0, 1024.0), "EPSG:32633")
    store = tmp_path / "masks.zarr"
    codes = write_mosaic(store, "s", grid, query_ids=["q"], query_texts=["t"], chunk_size=256)
    with rasterio.open(write_scene_cogs(store, "s", tmp_path)["q"]) as src:
        half = src.read(1, out_shape=(512, 512))  # the first overview
    blocks = np.ma.masked_equal(codes[0], 255).reshape(512, 2, 512, 2).astype(float).mean(axis=(1, 3))
    np.testing.assert_allclose(half[~blocks.mask], blocks.compressed(), atol=1)
    assert (half[blocks.mask] == 255).all()


def test_a_failed_write_leaves_the_previous_cog_and_no_partial_file(tmp_path, monkeypatch):
    store = tmp_path / "masks.zarr"
    codes = write_mosaic(store, "s", GRIDS["utm"])
    path = write_scene_cogs(store, "s", tmp_path / "cogs")["ponds"]
    before = path.read_bytes()

    def crash(src, dst, **options):
        with open(dst, "wb") as f:
            f.write(b"II*\x00 half a tiff")
        raise RuntimeError("disk full")

    monkeypatch.setattr(rasterio.shutil, "copy", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_cog(cog_sources(store, "s")[0], path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["ponds.tif", "roofs.tif"]  # no temporary left
    with rasterio.open(path) as src:
        np.testing.assert_array_equal(src.read(1), codes[0])


def test_only_cogs_of_a_changed_mosaic_are_rewritten(tmp_path):
    store = tmp_path / "masks.zarr"
    write_mosaic(store, "s", GRIDS["utm"], fingerprint="first")
    calls = []
    write_scene_cogs(store, "s", tmp_path / "cogs", on_file=lambda q, w: calls.append((q, w)))
    write_scene_cogs(store, "s", tmp_path / "cogs", on_file=lambda q, w: calls.append((q, w)))
    assert calls == [("ponds", True), ("roofs", True), ("ponds", False), ("roofs", False)]
    calls.clear()
    write_scene_cogs(store, "s", tmp_path / "cogs", only_stale=False, on_file=lambda q, w: calls.append((q, w)))
    assert calls == [("ponds", True), ("roofs", True)]
    calls.clear()
    write_mosaic(tmp_path / "other.zarr", "s", GRIDS["utm"], seed=5, fingerprint="second")
    paths = write_scene_cogs(tmp_path / "other.zarr", "s", tmp_path / "cogs", on_file=lambda q, w: calls.append(w))
    assert calls == [True, True]
    with rasterio.open(paths["ponds"]) as src:
        assert src.tags()[FINGERPRINT_TAG] == "second"


def test_file_names_are_safe_and_distinct():
    names = cog_file_names(["ponds", "a b", "a_b", "A_B", "../x"])
    assert names == {"ponds": "ponds.tif", "a b": "a_b.tif", "a_b": "a_b-2.tif", "A_B": "A_B-3.tif", "../x": "x.tif"}


def test_unknown_scene_is_a_one_line_error(tmp_path):
    store = tmp_path / "masks.zarr"
    write_mosaic(store, "s", GRIDS["utm"])
    with pytest.raises(MosaicNotFoundError, match="no mosaic for scene 'nope' in .*masks.zarr; check the scene id"):
        cog_sources(store, "nope")
    with pytest.raises(MosaicNotFoundError, match="no mosaic for scene 's'"):
        cog_sources(tmp_path / "missing.zarr", "s")


def _big_mosaic(store, shape: tuple[int, int], chunk: int) -> int:
    """A one-query mosaic whose diagonal chunks hold data (the rest is unwritten: nodata); returns its bytes."""
    ny, nx = shape
    grid = RasterGrid(shape, Affine(1.0, 0.0, 0.0, 0.0, -1.0, float(ny)), "EPSG:32633")
    create_mosaic(
        store, "big", grid, query_ids=["q"], query_texts=["t"], chunk_size=chunk, fingerprint="f", source="big.tif"
    )
    yy, xx = np.mgrid[0:chunk, 0:chunk]
    for offset in range(0, min(ny, nx), chunk):
        core = PixelWindow(offset, offset, chunk, chunk)
        write_core(store, "big", core, ((xx + yy) % 254).astype(np.uint8)[None])
    return ny * nx  # one byte per pixel


def test_python_memory_while_converting_stays_far_below_the_array(tmp_path):
    store = tmp_path / "masks.zarr"
    size = _big_mosaic(store, (4096, 4096), 512)  # 16 MiB of codes; a chunk is 256 KiB
    source = cog_sources(store, "big")[0]
    tracemalloc.start()
    try:
        write_cog(source, tmp_path / "big.tif", cache_mb=8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size / 4, f"peak {peak / 2**20:.1f} MiB of Python memory for a {size / 2**20:.0f} MiB array"
    with rasterio.open(tmp_path / "big.tif") as src:
        assert src.read(1, window=((512, 1024), (512, 1024)))[5, 7] == (5 + 7) % 254


_RSS_SCRIPT = """
import json, sys
from pathlib import Path
from rsrs.pipeline.cog import cog_sources, write_cog

def kib(key):  # from /proc/self/status: VmRSS now, VmHWM the peak since the last reset
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))

store, out = map(Path, sys.argv[1:])
write_cog(cog_sources(store, "small")[0], out / "warm.tif", cache_mb=16)  # load GDAL drivers and libraries
source = cog_sources(store, "big")[0]
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak to the current RSS (Linux)
before = kib("VmRSS")
write_cog(source, out / "big.tif", cache_mb=16)
print(json.dumps({"growth_kib": kib("VmHWM") - before}))
"""


@pytest.mark.slow
def test_process_memory_while_converting_a_large_scene_stays_far_below_the_array(tmp_path):
    """Peak RSS growth (Python, zarr and GDAL together) of a subprocess converting a 384 MiB scene.

    Constant overheads (GDAL's overview and compression threads, one Zarr chunk) stay near 100 MiB; reading the
    whole array at once would add all of it.
    """
    store = tmp_path / "masks.zarr"
    size = _big_mosaic(store, (16384, 24576), 2048)
    write_mosaic(store, "small", GRIDS["utm"], query_ids=["q"], query_texts=["t"])
    script = textwrap.dedent(_RSS_SCRIPT)
    run = subprocess.run([sys.executable, "-c", script, str(store), str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    growth = json.loads(run.stdout.splitlines()[-1])["growth_kib"] * 1024
    assert growth < size / 2, f"peak RSS grew {growth / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB array"

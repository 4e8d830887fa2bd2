"""Every raster of ../shared/data/real/imagery resolved as a scene and read (skipped when absent)."""

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp

from rsrs.pipeline.geometry import PixelWindow
from rsrs.pipeline.reading import read_tile
from rsrs.pipeline.scenes import scene_from_raster
from tests.conftest import REAL_DATA

NAMES = sorted(p.name for p in (REAL_DATA / "imagery").glob("*.tif"))


@pytest.mark.parametrize("name", NAMES or ["(no real imagery)"])
def test_real_raster_tile_matches_its_mask(real_data, name):
    path = real_data / "imagery" / name
    scene = scene_from_raster(str(path))
    ny, nx = scene.grid.shape
    window = PixelWindow(ny // 2, nx // 2, 512, 512)  # runs past the bottom-right corner
    rgb, valid = read_tile(scene, window)
    assert rgb.shape == (3, 512, 512) and rgb.dtype == np.uint8
    h, w = min(512, ny - ny // 2), min(512, nx - nx // 2)  # the part inside the scene
    assert not valid[h:].any() and not valid[:, w:].any()
    bands = sorted({b.band for b in scene.bands})
    with rasterio.open(path) as ds:
        win = ((ny // 2, ny // 2 + h), (nx // 2, nx // 2 + w))
        expected = (ds.read_masks(bands, window=win) > 0).any(axis=0)
        np.testing.assert_array_equal(valid[:h, :w], expected)
        data_bands = [i + 1 for i, c in enumerate(ds.colorinterp) if c != ColorInterp.alpha]
        if bands == data_bands:  # every data band used: GDAL's dataset mask says the same
            np.testing.assert_array_equal(valid[:h, :w], ds.dataset_mask(window=win) > 0)
    assert (rgb[:, ~valid] == 0).all()
    if valid.any():
        assert np.ptp(rgb[:, valid]) > 50  # scaled into 0..255 with real contrast, not crushed


def test_real_rasters_cover_every_kind(real_data):
    kinds = {scene_from_raster(str(real_data / "imagery" / n)).nodata for n in NAMES}
    assert {"alpha band", "internal mask", "nodata=0", "none"} <= kinds

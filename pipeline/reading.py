"""Reading a window of a scene as model input: RGB uint8 and a validity mask, boundless at the edges.

Validity comes from GDAL's mask bands (``read_masks``), which cover nodata values, internal masks and
alpha bands alike. A pixel is valid when any of its R, G, B bands is (GDAL's dataset-mask rule, so a dark
pixel with one zero channel is not nodata). Sources whose grid differs from the scene's (a coarser band
of a STAC item) are resampled bilinearly onto the scene grid through a ``WarpedVRT``.

Datasets are opened per call and closed at once: no per-process cache grows with the number of scenes
(GDAL's own block and ``/vsicurl/`` caches are bounded).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from rsrs.pipeline.geometry import PixelWindow, RasterGrid
from rsrs.pipeline.scaling import apply_scaling
from rsrs.pipeline.scenes import Scene, open_raster


def _on_grid(dataset: rasterio.DatasetReader, grid: RasterGrid) -> bool:
    return (
        dataset.shape == grid.shape
        and dataset.transform.almost_equals(grid.transform)
        and dataset.crs == CRS.from_user_input(grid.crs)
    )


def _read_bands(
    dataset: rasterio.DatasetReader, grid: RasterGrid, indexes: list[int], window: PixelWindow
) -> tuple[np.ndarray, np.ndarray]:
    """``(values (k, h, w), valid (k, h, w) bool)`` of ``indexes`` inside ``window`` (within the grid)."""
    rio_window = Window(window.col_off, window.row_off, window.width, window.height)
    if _on_grid(dataset, grid):
        return dataset.read(indexes, window=rio_window), dataset.read_masks(indexes, window=rio_window) > 0
    with WarpedVRT(
        dataset,
        crs=CRS.from_user_input(grid.crs),
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=Resampling.bilinear,
        add_alpha=dataset.nodata is None,  # so pixels outside this source's footprint read as invalid
    ) as vrt:
        return vrt.read(indexes, window=rio_window), vrt.read_masks(indexes, window=rio_window) > 0


def read_tile(scene: Scene, window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
    """Read ``window`` of ``scene`` (scene pixels; may pass the edges) as model input.

    Returns ``rgb`` (3, h, w) uint8 scaled with the scene's resolved stretch and ``valid`` (h, w) bool;
    pixels outside the scene or without valid data are False in ``valid`` and 0 in ``rgb``.
    """
    h, w = window.shape
    rgb = np.zeros((3, h, w), dtype=np.uint8)
    valid = np.zeros((h, w), dtype=bool)
    inner = window.intersection(scene.grid.full_window())
    if inner is None:
        return rgb, valid
    ih, iw = inner.shape
    values = np.zeros((3, ih, iw), dtype=scene.dtype)
    masks = np.zeros((3, ih, iw), dtype=bool)
    positions: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for pos, src in enumerate(scene.bands):  # href -> band index -> positions in R, G, B
        positions[src.href][src.band].append(pos)
    for href, by_band in positions.items():
        indexes = sorted(by_band)
        with open_raster(href) as dataset:
            data, ok = _read_bands(dataset, scene.grid, indexes, inner)  # (k, ih, iw) each
        for k, band in enumerate(indexes):
            for pos in by_band[band]:
                values[pos], masks[pos] = data[k], ok[k]
    inner_valid = masks.any(axis=0)  # (ih, iw)
    scaled = apply_scaling(values, scene.scaling)  # (3, ih, iw) uint8
    rows, cols = inner.relative_to(window).slices()
    rgb[:, rows, cols] = np.where(inner_valid, scaled, 0)
    valid[rows, cols] = inner_valid
    return rgb, valid

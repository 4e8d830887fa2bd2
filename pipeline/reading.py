"""Reading a window of a scene as model input: RGB uint8 and a validity mask, boundless at the edges.

Validity comes from GDAL's mask bands (``read_masks``), which cover nodata values, internal masks and
alpha bands alike. A pixel is valid when any of its R, G, B bands is (GDAL's dataset-mask rule, so a dark
pixel with one zero channel is not nodata). Sources whose grid differs from the scene's (a coarser band
of a STAC item) are resampled bilinearly onto the scene grid through a ``WarpedVRT``.

Datasets are opened per call and closed at once: no per-process cache grows with the number of scenes
(GDAL's own block and ``/vsicurl/`` caches are bounded). So that neighbouring tiles do not each decode the
blocks they share, :func:`read_tiles` reads a run of tiles in one row as one window and cuts it apart. A source
whose bands GDAL flags as all valid (no nodata, mask or alpha) is not asked for a mask at all.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from rsrs.core.errors import InputDataError
from rsrs.pipeline.geometry import PixelWindow, RasterGrid
from rsrs.pipeline.scaling import apply_scaling
from rsrs.pipeline.scenes import Scene, open_raster

#: At most this many neighbouring tiles are read as one window: enough to share blocks and GIL-free decoding,
#: few enough to bound one read's memory (8 x 1 Mpx tiles of float32 RGB are under 100 MB).
RUN_TILES = 8


class TileReadError(InputDataError):
    """A window of an opened scene cannot be read (e.g. a corrupt block); says which window and GDAL's reason."""

    def __init__(self, scene: Scene, window: PixelWindow, reason: str) -> None:
        self.window, self.reason = window, reason
        super().__init__(
            f"{scene.source}: cannot read rows {window.row_off}-{window.row_end}, "
            f"cols {window.col_off}-{window.col_end}: {reason}"
        )


def _on_grid(dataset: rasterio.DatasetReader, grid: RasterGrid) -> bool:
    return (
        dataset.shape == grid.shape
        and dataset.transform.almost_equals(grid.transform)
        and dataset.crs == CRS.from_user_input(grid.crs)
    )


def _read_bands(
    dataset: rasterio.DatasetReader, grid: RasterGrid, indexes: list[int], window: PixelWindow
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(values (k, h, w), valid (k, h, w) bool)`` of ``indexes`` inside ``window`` (within the grid); valid is
    None where every pixel is (bands GDAL flags all valid: reading their masks would only spend time)."""
    rio_window = Window(window.col_off, window.row_off, window.width, window.height)
    if _on_grid(dataset, grid):
        values = dataset.read(indexes, window=rio_window)
        flags = [dataset.mask_flag_enums[i - 1] for i in indexes]
        if all(MaskFlags.all_valid in f for f in flags):
            return values, None
        return values, dataset.read_masks(indexes, window=rio_window) > 0
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
    values = np.empty((3, ih, iw), dtype=scene.dtype)  # every position is some source band's
    masks = np.zeros((3, ih, iw), dtype=bool)
    all_valid = False  # a source without invalid pixels makes every pixel valid (the any-band rule)
    positions: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for pos, src in enumerate(scene.bands):  # href -> band index -> positions in R, G, B
        positions[src.href][src.band].append(pos)
    for href, by_band in positions.items():
        indexes = sorted(by_band)
        with open_raster(href) as dataset:
            try:
                data, ok = _read_bands(dataset, scene.grid, indexes, inner)  # (k, ih, iw) each
            except RasterioError as err:
                raise TileReadError(scene, inner, _gdal_reason(err)) from None
        all_valid = all_valid or ok is None
        for k, band in enumerate(indexes):
            for pos in by_band[band]:
                values[pos] = data[k]
                if ok is not None:
                    masks[pos] = ok[k]
    scaled = apply_scaling(values, scene.scaling)  # (3, ih, iw) uint8
    rows, cols = inner.relative_to(window).slices()
    inner_valid = True if all_valid else masks.any(axis=0)  # (ih, iw)
    rgb[:, rows, cols] = scaled if np.all(inner_valid) else np.where(inner_valid, scaled, 0)
    valid[rows, cols] = inner_valid
    return rgb, valid


def _gdal_reason(err: BaseException) -> str:
    """GDAL's own message: rasterio's read errors wrap it as their cause ("See previous exception")."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def read_tiles(
    scene: Scene, windows: Sequence[PixelWindow], *, map_fn: Callable[..., Iterable] = map, parallel: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_tile` of each of ``windows`` (all one shape), stacked: (B, 3, h, w) uint8, (B, h, w) bool.

    Windows that continue one another along a row (tiles' reads overlap by their context) are read as one
    window of at most :data:`RUN_TILES` tiles, then cut apart: each block is decoded once rather than by every
    tile that touches it, and one GDAL call holds the GIL far less than several, which matters in a worker
    whose other threads feed a GPU. ``map_fn`` maps over the runs (e.g. a thread pool's ``map``) with
    ``parallel`` threads: runs are kept short enough to give each thread one (on many cores, decoding in parallel
    gains more than the few blocks that neighbouring runs both decode).
    """
    assert len({w.shape for w in windows}) <= 1, "read_tiles needs windows of one shape"
    h, w = windows[0].shape if windows else (0, 0)
    rgb = np.empty((len(windows), 3, h, w), dtype=np.uint8)
    valid = np.empty((len(windows), h, w), dtype=bool)
    per_thread = math.ceil(len(windows) / max(1, parallel))
    runs = list(_runs(windows, max_tiles=max(1, min(RUN_TILES, per_thread))))
    i = 0
    for run, (run_rgb, run_valid) in zip(runs, map_fn(lambda r: read_tile(scene, _union(r)), runs), strict=True):
        for window in run:
            cols = slice(window.col_off - run[0].col_off, window.col_end - run[0].col_off)
            rgb[i], valid[i] = run_rgb[:, :, cols], run_valid[:, cols]
            i += 1
    return rgb, valid


def _runs(windows: Sequence[PixelWindow], *, max_tiles: int) -> Iterator[list[PixelWindow]]:
    """``windows`` in order, grouped into runs of at most ``max_tiles``: same rows, each starting right of the last
    and touching it."""
    run: list[PixelWindow] = []
    for window in windows:
        if run and len(run) < max_tiles and _continues(run[-1], window):
            run.append(window)
            continue
        if run:
            yield run
        run = [window]
    if run:
        yield run


def _continues(last: PixelWindow, window: PixelWindow) -> bool:
    """``window`` lies on ``last``'s rows and starts right of it, overlapping or touching it."""
    same_rows = (window.row_off, window.height) == (last.row_off, last.height)
    return same_rows and last.col_off < window.col_off <= last.col_end


def _union(run: Sequence[PixelWindow]) -> PixelWindow:
    """The window spanning a run (first to last, same rows)."""
    return PixelWindow(run[0].row_off, run[0].col_off, run[0].height, run[-1].col_end - run[0].col_off)

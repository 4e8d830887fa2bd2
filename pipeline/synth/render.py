"""Draw a layout to RGB pixels, one window at a time, so that scenes of any size render in bounded memory.

Paints are burnt in order with ``rasterio.features.rasterize`` into a window of paint indexes; colour,
texture and owning object are then table look-ups. Texture is luminance noise at three scales: per-pixel
grain (seeded 256 px tiles), 4 px blotches and 32 px variation, all fixed per scene, so windows join
seamlessly: any window renders the same pixels whatever the windowing.
"""

from __future__ import annotations

import math

import numpy as np
from affine import Affine
from rasterio.features import rasterize
from shapely import STRtree
from shapely.geometry import box

from rsrs.pipeline.geometry import PixelWindow
from rsrs.pipeline.synth.layout import Layout

GRAIN_TILE = 256  # px; per-pixel noise comes in seeded tiles of this size


def _upsample(field: np.ndarray, window: PixelWindow, scale: int) -> np.ndarray:
    """Bilinear sample of a coarse ``field`` (one value per ``scale`` px) over ``window`` -> (height, width)."""
    y = (np.arange(window.row_off, window.row_end) + 0.5) / scale
    x = (np.arange(window.col_off, window.col_end) + 0.5) / scale
    i, j = y.astype(np.int64), x.astype(np.int64)
    fy, fx = (y - i).astype(np.float32)[:, None], (x - j).astype(np.float32)[None, :]
    top = field[np.ix_(i, j)] * (1 - fx) + field[np.ix_(i, j + 1)] * fx
    bottom = field[np.ix_(i + 1, j)] * (1 - fx) + field[np.ix_(i + 1, j + 1)] * fx
    return top * (1 - fy) + bottom * fy


class SceneRenderer:
    """Renders windows of one layout; the same (layout, seed, window) always gives the same pixels."""

    def __init__(self, layout: Layout, *, seed: int) -> None:
        ny, nx = layout.shape
        paints = layout.paints
        self.layout, self.seed = layout, seed
        self._geoms = [p.geometry for p in paints]
        self._index = STRtree(self._geoms)
        # Look-up tables indexed by paint index + 1 (0: nothing painted, never happens inside the scene).
        self._rgb = np.array([(0, 0, 0)] + [p.rgb for p in paints], dtype=np.float32)  # (P+1, 3)
        self._texture = np.array([(0, 0, 0)] + [p.texture for p in paints], dtype=np.float32)  # (P+1, 3)
        self.owner = np.array([0] + [p.owner for p in paints], dtype=np.int32)  # (P+1,)
        rng = np.random.default_rng([seed, 1])
        self._mid = rng.standard_normal((math.ceil(ny / 4) + 2, math.ceil(nx / 4) + 2), dtype=np.float32)
        self._coarse = rng.standard_normal((math.ceil(ny / 32) + 2, math.ceil(nx / 32) + 2), dtype=np.float32)

    def labels(self, window: PixelWindow) -> np.ndarray:
        """(height, width) int32: 1 + index of the topmost paint at each pixel of ``window``."""
        area = box(window.col_off, window.row_off, window.col_end, window.row_end)
        hits = np.sort(self._index.query(area))  # painting order is index order
        return rasterize(
            ((self._geoms[i], int(i) + 1) for i in hits),
            out_shape=window.shape,
            transform=Affine.translation(window.col_off, window.row_off),
            fill=0,
            dtype="int32",
        )

    def objects(self, labels: np.ndarray) -> np.ndarray:
        """(height, width) int32 id of the object visible at each pixel (0: background)."""
        return self.owner[labels]

    def _grain(self, window: PixelWindow) -> np.ndarray:
        """(height, width) per-pixel noise from fixed seeded 256 px tiles: the same whatever the windowing."""
        out = np.empty(window.shape, dtype=np.float32)
        for tr in range(window.row_off // GRAIN_TILE, (window.row_end - 1) // GRAIN_TILE + 1):
            for tc in range(window.col_off // GRAIN_TILE, (window.col_end - 1) // GRAIN_TILE + 1):
                tile_window = PixelWindow(tr * GRAIN_TILE, tc * GRAIN_TILE, GRAIN_TILE, GRAIN_TILE)
                tile = np.random.default_rng([self.seed, 2, tr, tc]).standard_normal(tile_window.shape, np.float32)
                part = tile_window.intersection(window)
                out[part.relative_to(window).slices()] = tile[part.relative_to(tile_window).slices()]
        return out

    def image(self, window: PixelWindow, labels: np.ndarray) -> np.ndarray:
        """(height, width, 3) uint8 RGB of ``window``, given its :meth:`labels`."""
        grain = self._grain(window)
        texture = self._texture[labels]  # (h, w, 3): fine, mid, coarse amplitudes
        luminance = texture[..., 0] * grain
        luminance += texture[..., 1] * _upsample(self._mid, window, 4)
        luminance += texture[..., 2] * _upsample(self._coarse, window, 32)
        rgb = self._rgb[labels]  # (h, w, 3)
        rgb += luminance[..., None]
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

"""Raster grids as immutable values: shape, affine transform and CRS, and the windows cut from them.

Pure geometry: no rasterio, fsspec or Dask imports here. CRS is kept as a string (WKT or an authority code
such as ``EPSG:32614``) so grids hash, compare and pickle cheaply; readers turn it into a ``CRS`` object.
Shapes are always ``(ny, nx)`` in pixels; transforms map pixel (col, row) to CRS (x, y).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from affine import Affine


@dataclass(frozen=True, order=True)
class PixelWindow:
    """A rectangle of pixels: first row/col and size, in the pixel frame of some grid.

    Offsets may be negative and extents may pass the grid's edge (a *boundless* read fills the outside).
    """

    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the window."""
        return (self.height, self.width)

    @property
    def row_end(self) -> int:
        """One past the last row."""
        return self.row_off + self.height

    @property
    def col_end(self) -> int:
        """One past the last column."""
        return self.col_off + self.width

    def pad(self, pixels: int) -> PixelWindow:
        """The window grown by ``pixels`` on every side (may leave the grid)."""
        return PixelWindow(
            self.row_off - pixels, self.col_off - pixels, self.height + 2 * pixels, self.width + 2 * pixels
        )

    def intersection(self, other: PixelWindow) -> PixelWindow | None:
        """The overlap of two windows, or None when they do not overlap."""
        r0, c0 = max(self.row_off, other.row_off), max(self.col_off, other.col_off)
        r1, c1 = min(self.row_end, other.row_end), min(self.col_end, other.col_end)
        if r1 <= r0 or c1 <= c0:
            return None
        return PixelWindow(r0, c0, r1 - r0, c1 - c0)

    def relative_to(self, outer: PixelWindow) -> PixelWindow:
        """This window expressed in the pixel frame of ``outer`` (offsets from outer's corner)."""
        return PixelWindow(self.row_off - outer.row_off, self.col_off - outer.col_off, self.height, self.width)

    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices for indexing an array in this window's frame."""
        return slice(self.row_off, self.row_end), slice(self.col_off, self.col_end)


@dataclass(frozen=True)
class RasterGrid:
    """A georeferenced pixel grid: ``shape`` (ny, nx), ``transform`` (pixel -> CRS) and ``crs``."""

    shape: tuple[int, int]
    transform: Affine
    crs: str | None

    def __post_init__(self) -> None:
        ny, nx = self.shape
        if ny <= 0 or nx <= 0:
            raise ValueError(f"grid shape must be positive (ny, nx), got {self.shape}")
        object.__setattr__(self, "shape", (int(ny), int(nx)))

    @property
    def height(self) -> int:
        """Number of rows (ny)."""
        return self.shape[0]

    @property
    def width(self) -> int:
        """Number of columns (nx)."""
        return self.shape[1]

    @property
    def resolution(self) -> tuple[float, float]:
        """Pixel size ``(res_y, res_x)`` in CRS units, both positive (rotated grids: column/row vector norms)."""
        t = self.transform
        return (math.hypot(t.b, t.e), math.hypot(t.a, t.d))

    @property
    def pixel_area(self) -> float:
        """Area of one pixel in CRS units squared (absolute determinant of the transform)."""
        return abs(self.transform.determinant)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` of the grid's footprint in CRS units."""
        ny, nx = self.shape
        xs, ys = zip(*(self.transform * (c, r) for c, r in ((0, 0), (nx, 0), (0, ny), (nx, ny))), strict=True)
        return (min(xs), min(ys), max(xs), max(ys))

    def full_window(self) -> PixelWindow:
        """The window covering the whole grid."""
        return PixelWindow(0, 0, *self.shape)

    def window(self, window: PixelWindow) -> RasterGrid:
        """The grid of pixels inside ``window`` (same CRS and resolution, shifted origin)."""
        return RasterGrid(
            shape=window.shape,
            transform=self.transform * Affine.translation(window.col_off, window.row_off),
            crs=self.crs,
        )

    def crop(self, window: PixelWindow) -> RasterGrid:
        """Like :meth:`window`, but clipped to this grid's extent first."""
        clipped = window.intersection(self.full_window())
        if clipped is None:
            raise ValueError(f"window {window} lies outside grid of shape {self.shape}")
        return self.window(clipped)

    def pad(self, pixels: int) -> RasterGrid:
        """The grid grown by ``pixels`` on every side."""
        return self.window(self.full_window().pad(pixels))

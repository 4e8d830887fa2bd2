"""The tile grid of a scene: which pixels each inference tile reads and which it owns.

Pure planning (no rasterio, Zarr or Dask): :func:`plan_tiles` returns a :class:`TileGrid` that the
pipeline executes elsewhere.

Definitions, all in the scene's pixel frame:

- ``core_size = tile_size - 2 * overlap``. Cores lie on a regular grid starting at pixel (0, 0) with step
  ``core_size``; this is exactly the Zarr chunk grid of the output mosaic, so each tile owns one chunk and
  writes it once. Edge cores are clipped to the scene, so the scene is covered to its last pixel and no
  further.
- Every tile *reads* a ``tile_size`` x ``tile_size`` window: its core's unclipped square grown by
  ``overlap`` on every side. Reads may leave the scene (boundless; outside pixels are invalid), and all
  tiles have the same read shape, so any of them can be batched together.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rsrs.core.errors import ConfigError
from rsrs.pipeline.geometry import PixelWindow, RasterGrid


@dataclass(frozen=True, order=True)
class Tile:
    """One inference tile: its place in the tile grid, the pixels it owns (core) and those it reads."""

    row: int
    col: int
    core: PixelWindow
    read: PixelWindow

    @property
    def key(self) -> str:
        """A stable name for file names and logs, e.g. ``r0003_c0012``."""
        return f"r{self.row:04d}_c{self.col:04d}"

    @property
    def core_in_read(self) -> PixelWindow:
        """The core expressed in the read window's frame (where to cut model output)."""
        return self.core.relative_to(self.read)


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one scene: a ``n_rows`` x ``n_cols`` grid of cores of ``core_size`` pixels."""

    grid: RasterGrid
    tile_size: int
    overlap: int

    @property
    def core_size(self) -> int:
        """Side of a core in pixels; also the Zarr chunk side of the mosaic."""
        return self.tile_size - 2 * self.overlap

    @property
    def n_rows(self) -> int:
        """Number of tile rows (ceil of scene height / core size)."""
        return -(-self.grid.height // self.core_size)

    @property
    def n_cols(self) -> int:
        """Number of tile columns (ceil of scene width / core size)."""
        return -(-self.grid.width // self.core_size)

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    def __iter__(self) -> Iterator[Tile]:
        """Tiles in row-major order."""
        for row in range(self.n_rows):
            for col in range(self.n_cols):
                yield self.tile(row, col)

    def tile(self, row: int, col: int) -> Tile:
        """The tile at grid position (row, col)."""
        assert 0 <= row < self.n_rows and 0 <= col < self.n_cols, (row, col)
        size = self.core_size
        square = PixelWindow(row * size, col * size, size, size)
        core = square.intersection(self.grid.full_window())
        assert core is not None
        return Tile(row=row, col=col, core=core, read=square.pad(self.overlap))


def plan_tiles(grid: RasterGrid, *, tile_size: int, overlap: int) -> TileGrid:
    """Plan the tiles of a scene; raises :class:`ConfigError` when the sizes leave no core."""
    if tile_size <= 0 or overlap < 0:
        raise ConfigError(f"tiling: tile_size must be > 0 and overlap >= 0, got {tile_size} and {overlap}")
    if tile_size - 2 * overlap <= 0:
        raise ConfigError(
            f"tiling: tile_size ({tile_size}) must exceed twice the overlap ({overlap}); "
            "lower tiling.overlap or raise tiling.tile_size"
        )
    return TileGrid(grid=grid, tile_size=tile_size, overlap=overlap)


def batched(tiles: Sequence[Tile], batch_size: int) -> list[tuple[Tile, ...]]:
    """Consecutive groups of at most ``batch_size`` tiles (one Dask task each)."""
    if batch_size <= 0:
        raise ConfigError(f"tiling: batch_size must be > 0, got {batch_size}")
    return [tuple(tiles[i : i + batch_size]) for i in range(0, len(tiles), batch_size)]

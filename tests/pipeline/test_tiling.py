import numpy as np
import pytest
from affine import Affine

from rsrs.core.errors import ConfigError
from rsrs.pipeline.geometry import RasterGrid
from rsrs.pipeline.tiling import batched, plan_tiles


def _grid(ny: int, nx: int) -> RasterGrid:
    return RasterGrid(shape=(ny, nx), transform=Affine(2.0, 0, 1000.0, 0, -2.0, 5000.0), crs="EPSG:32614")


@pytest.mark.parametrize(("ny", "nx"), [(300, 260), (96, 96), (1, 500), (97, 95)])
def test_cores_cover_a_non_multiple_scene_exactly_once_to_the_last_pixel(ny, nx):
    tiles = plan_tiles(_grid(ny, nx), tile_size=64, overlap=16)  # core 32
    cover = np.zeros((ny, nx), np.int32)
    for tile in tiles:
        cover[tile.core.slices()] += 1
        assert tile.core.row_end <= ny and tile.core.col_end <= nx
    assert (cover == 1).all()
    assert len(tiles) == tiles.n_rows * tiles.n_cols == -(-ny // 32) * -(-nx // 32)


def test_every_read_window_is_the_padded_core_square_of_tile_size():
    tiles = plan_tiles(_grid(100, 70), tile_size=64, overlap=16)
    for tile in tiles:
        assert tile.read.shape == (64, 64)
        assert (tile.read.row_off, tile.read.col_off) == (tile.core.row_off - 16, tile.core.col_off - 16)
        inner = tile.core_in_read
        assert (inner.row_off, inner.col_off) == (16, 16) and inner.shape == tile.core.shape


def test_cores_lie_on_the_chunk_grid():
    tiles = plan_tiles(_grid(130, 130), tile_size=50, overlap=5)
    for tile in tiles:
        assert tile.core.row_off == tile.row * tiles.core_size
        assert tile.core.col_off == tile.col * tiles.core_size


def test_zero_overlap_reads_just_the_core_square():
    tile = next(iter(plan_tiles(_grid(10, 10), tile_size=8, overlap=0)))
    assert tile.read == tile.core


@pytest.mark.parametrize(("tile_size", "overlap"), [(32, 16), (32, 20), (0, 0), (32, -1)])
def test_sizes_without_a_core_are_rejected(tile_size, overlap):
    with pytest.raises(ConfigError, match="tiling"):
        plan_tiles(_grid(10, 10), tile_size=tile_size, overlap=overlap)


def test_batches_keep_order_and_size():
    tiles = list(plan_tiles(_grid(100, 100), tile_size=20, overlap=0))
    groups = batched(tiles, 7)
    assert [t for g in groups for t in g] == tiles
    assert all(len(g) == 7 for g in groups[:-1]) and 0 < len(groups[-1]) <= 7
    with pytest.raises(ConfigError):
        batched(tiles, 0)

"""Seeded probability mosaics for tests, written the way ``rsrs run`` writes them (create_mosaic + write_core)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from affine import Affine

from rsrs.pipeline.geometry import RasterGrid
from rsrs.pipeline.mosaic import create_mosaic, encode_probability, write_core
from rsrs.pipeline.tiling import plan_tiles

#: One small grid per CRS kind the outputs must carry: UTM (metres), Web Mercator, geographic degrees.
GRIDS = {
    "utm": RasterGrid((150, 110), Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4100000.0), "EPSG:32614"),
    "mercator": RasterGrid((90, 130), Affine(2.0, 0.0, 1000.0, 0.0, -2.0, 5000.0), "EPSG:3857"),
    "wgs84": RasterGrid((80, 100), Affine(1e-4, 0.0, 10.0, 0.0, -1e-4, 50.0), "EPSG:4326"),
}


def write_mosaic(
    store: Path,
    scene_id: str,
    grid: RasterGrid,
    *,
    query_ids: Sequence[str] = ("ponds", "roofs"),
    query_texts: Sequence[str] = ("the dark ponds", "red-roofed buildings"),
    chunk_size: int = 32,
    seed: int = 0,
    fingerprint: str = "f1",
) -> np.ndarray:
    """Write a complete mosaic of seeded probabilities and return its codes: Q x ny x nx uint8.

    The left fifth of the columns is invalid (code 255, NaN when decoded), as where an input has no data.
    """
    rng = np.random.default_rng(seed)
    ny, nx = grid.shape
    probs = rng.random((len(query_ids), ny, nx), dtype=np.float32)
    valid = np.ones((ny, nx), bool)
    valid[:, : nx // 5] = False
    create_mosaic(
        store,
        scene_id,
        grid,
        query_ids=query_ids,
        query_texts=query_texts,
        chunk_size=chunk_size,
        fingerprint=fingerprint,
        source=f"{scene_id}.tif",
    )
    codes = encode_probability(probs, valid)
    for tile in plan_tiles(grid, tile_size=chunk_size, overlap=0):
        rows, cols = tile.core.slices()
        write_core(store, scene_id, tile.core, np.ascontiguousarray(codes[:, rows, cols]))
    return codes

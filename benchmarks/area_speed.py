"""Cost of ``area_m2`` (the area on the ground) per 10,000 polygons, against the planar area it replaced.

Polygons come from polygonising a smooth random probability field, as a worker does (staircase pixel outlines),
on a UTM, a Web Mercator and a lon/lat grid. Before, a projected CRS got ``shapely.area`` times its unit squared
(fast, wrong off the true-scale lines: 2.5x at 51° in Web Mercator) and a geographic one pyproj's geodesic area
polygon by polygon in Python. ``polygon_frame`` (area + reprojection to EPSG:4326) is timed for context: it runs
on the client, once per scene.

Run from the repository root:  python -m benchmarks.area_speed [--polygons 10000]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS
from scipy import ndimage

from benchmarks._common import write_result
from rsrs.pipeline.area import area_m2
from rsrs.pipeline.geometry import RasterGrid
from rsrs.pipeline.mosaic import encode_probability
from rsrs.pipeline.polygons import TilePolygons, polygon_frame, polygonise_codes

GRIDS = {
    "EPSG:32614": Affine(0.5, 0, 500_000.0, 0, -0.5, 4_100_000.0),
    "EPSG:3857": Affine(0.5, 0, 1_000_000.0, 0, -0.5, 6_630_000.0),
    "EPSG:4326": Affine(5e-6, 0, 10.0, 0, -5e-6, 51.0),
}


def _planar_area(geoms: np.ndarray, crs: str) -> np.ndarray:
    """What ``area_m2`` computed before: planar in a projected CRS, geodesic polygon by polygon in a geographic."""
    source = CRS.from_user_input(crs)
    if source.is_geographic:
        geod = source.get_geod()
        return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geoms])
    return shapely.area(geoms) * source.axis_info[0].unit_conversion_factor ** 2


def _best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _scene_polygons(field: np.ndarray, grid: RasterGrid, count: int) -> TilePolygons:
    """``count`` polygons of ``field`` thresholded at 0.55 on ``grid`` (the scene's own, repeated up to count)."""
    codes = encode_probability(field, np.ones(grid.shape, bool))
    tile = polygonise_codes(codes, key="all", core=grid.full_window(), scene_shape=grid.shape, threshold=0.55)
    pick = np.resize(np.arange(len(tile)), count)
    columns = ("query", "geometry", "prob_sum", "n_pixels", "on_edge")
    return replace(tile, **{name: getattr(tile, name)[pick] for name in columns})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--polygons", type=int, default=10_000)
    args = parser.parse_args()
    size = 2048
    field = ndimage.gaussian_filter(np.random.default_rng(0).random((1, size, size)), 2.0)
    field = (field - field.min()) / (field.max() - field.min())
    per_10k = 10_000 / args.polygons
    result: dict = {"cpu_count": os.cpu_count(), "polygons": args.polygons, "seconds_per_10k_polygons": {}}
    for crs, t in GRIDS.items():
        grid = RasterGrid(shape=(size, size), transform=t, crs=crs)
        tile = _scene_polygons(field, grid, args.polygons)
        geoms = shapely.transform(tile.geometry, lambda xy, t=t: np.column_stack([t.a * xy[:, 0] + t.c,
                                                                                  t.e * xy[:, 1] + t.f]))  # fmt: skip
        frame_kwargs = {"scene_id": "s", "grid": grid, "query_ids": ["q"], "query_texts": ["q"]}
        frame_kwargs |= {"min_area_m2": 0.0, "vector_crs": "EPSG:4326"}
        before = _best_of(lambda g=geoms, c=crs: _planar_area(g, c))
        after = _best_of(lambda g=geoms, c=crs: area_m2(g, c))
        frame = _best_of(lambda p=tile, kw=frame_kwargs: polygon_frame(p, **kw), repeat=3)
        ratio = np.mean(_planar_area(geoms, crs) / area_m2(geoms, crs))
        result["seconds_per_10k_polygons"][crs] = {
            "vertices_per_polygon": round(float(shapely.get_num_coordinates(geoms).mean()), 1),
            "before_planar_or_geod_loop": round(before * per_10k, 4),
            "after_area_on_the_ground": round(after * per_10k, 4),
            "polygon_frame_after": round(frame * per_10k, 4),
            "mean_ratio_planar_to_ground_area": round(float(ratio), 6),
        }
    write_result("area_speed", result)


if __name__ == "__main__":
    main()

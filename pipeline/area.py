"""Areas on the ground, in square metres, of polygons given in any CRS.

A planar area in a projected CRS is not the area on the ground: Web Mercator inflates it by 1/cos²(latitude)
(2.5x at 51°), UTM by up to about 0.2% across a zone. So polygons go to a Lambert azimuthal equal-area
projection on the CRS's own ellipsoid, centred near them: that projection keeps every area on the ellipsoid
exactly, so the planar area there is the area on the ground. Edges are straight in the source CRS (pixel edges)
and curve in the equal-area plane, so edges longer than ``MAX_EDGE_M`` are first split in the source CRS; with
1 km pieces the result matches pyproj's geodesic area of the same outline to better than 1e-8.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import shapely
from pyproj import CRS, Transformer
from pyproj.crs import ProjectedCRS
from pyproj.crs.coordinate_operation import LambertAzimuthalEqualAreaConversion

MAX_EDGE_M = 1000.0  # longer edges are split before projecting (source CRS units, converted from metres)
_EARTH_RADIUS_M = 6_371_008.8  # only converts MAX_EDGE_M to degrees for a geographic CRS


def area_m2(geoms: np.ndarray, crs: str | None) -> np.ndarray:
    """Areas on the ground (m², on the CRS's ellipsoid) of polygons and multipolygons in ``crs``; holes excluded.

    geoms: N shapely geometries in ``crs`` units (x = easting or longitude). Without a CRS the pixel-space area
    means nothing in m², so it is NaN; a CRS with no ellipsoid (a local engineering frame) is flat: planar area.
    """
    if crs is None:
        return np.full(len(geoms), np.nan)
    source = CRS.from_user_input(crs)
    unit = source.axis_info[0].unit_conversion_factor  # metres, or radians for degrees
    if source.geodetic_crs is None:
        return shapely.area(geoms) * unit**2
    max_edge = MAX_EDGE_M / (unit * _EARTH_RADIUS_M if source.is_geographic else unit)
    x, y, ring, polygon_of_ring, geom_of_polygon, exterior = _rings(_split_long_edges(geoms, max_edge))
    if len(x) == 0:  # no geometries, or only empty ones
        return np.zeros(len(geoms), np.float64)
    to_lonlat = Transformer.from_crs(source, source.geodetic_crs, always_xy=True)
    lon, lat = to_lonlat.transform((x.min() + x.max()) / 2, (y.min() + y.max()) / 2)
    # Any centre keeps areas exact; rounding it lets the scenes of one region share one transformer.
    ex, ey = _to_equal_area(crs, round(lat), round(lon)).transform(x, y)
    ring_area = _shoelace(ex, ey, ring, n_rings=len(polygon_of_ring))
    signed = np.where(exterior, ring_area, -ring_area)
    return np.bincount(geom_of_polygon[polygon_of_ring], weights=signed, minlength=len(geoms))


def _split_long_edges(geoms: np.ndarray, max_edge: float) -> np.ndarray:
    """``geoms`` with edges longer than ``max_edge`` split; only geometries that can hold one are touched."""
    xmin, ymin, xmax, ymax = shapely.bounds(geoms).T
    large = np.maximum(xmax - xmin, ymax - ymin) > max_edge
    if not large.any():
        return geoms
    out = np.array(geoms, dtype=object)
    out[large] = shapely.segmentize(out[large], max_edge)
    return out


def _rings(geoms: np.ndarray) -> tuple[np.ndarray, ...]:
    """Vertices of every ring, flattened: ``x, y, ring`` (per vertex) and, per ring, ``polygon_of_ring``,
    ``exterior``; per polygon part, ``geom_of_polygon`` (the index into ``geoms``)."""
    polygons, geom_of_polygon = shapely.get_parts(geoms, return_index=True)
    rings, polygon_of_ring = shapely.get_rings(polygons, return_index=True)  # each polygon's exterior comes first
    exterior = np.r_[True, polygon_of_ring[1:] != polygon_of_ring[:-1]] if len(rings) else np.zeros(0, bool)
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    return xy[:, 0], xy[:, 1], ring, polygon_of_ring, geom_of_polygon, exterior


def _shoelace(x: np.ndarray, y: np.ndarray, ring: np.ndarray, *, n_rings: int) -> np.ndarray:
    """Unsigned planar area of each closed ring from its vertices (``ring``: ring index per vertex, grouped).

    Vertices are taken relative to their ring's first one: a square metre 100 km from the projection's centre
    would otherwise be the small difference of products near 1e10, losing six digits.
    """
    start = np.ones(len(ring), bool)
    start[1:] = ring[1:] != ring[:-1]
    first = np.flatnonzero(start)[np.cumsum(start) - 1]  # per vertex: index of its ring's first vertex
    x, y = x - x[first], y - y[first]
    same = ~start[1:]  # consecutive vertices of one ring (rings repeat their first vertex last)
    cross = (x[:-1] * y[1:] - x[1:] * y[:-1])[same]
    return np.abs(np.bincount(ring[:-1][same], weights=cross, minlength=n_rings)) / 2


@lru_cache(maxsize=16)
def _to_equal_area(crs: str, lat: float, lon: float) -> Transformer:
    """``crs`` -> Lambert azimuthal equal-area at (lat, lon) on the same ellipsoid (no datum shift)."""
    source = CRS.from_user_input(crs)
    target = ProjectedCRS(LambertAzimuthalEqualAreaConversion(lat, lon), geodetic_crs=source.geodetic_crs)
    return Transformer.from_crs(source, target, always_xy=True)

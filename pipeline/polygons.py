"""Polygons from probability tiles: polygonise each core, merge objects cut by core borders, write GeoParquet.

Tasks polygonise their tile cores in the scene's *pixel* frame (integer vertex coordinates), so polygons of
neighbouring cores share exactly equal edges and merge without slivers; the client maps merged polygons to
the scene CRS with its affine transform, measures them and reprojects them to the output CRS.
Each polygon carries the sum of probabilities and the pixel count inside it, so merged scores are exact
area-weighted means.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from affine import Affine
from rasterio import features
from rasterio.errors import NotGeoreferencedWarning
from scipy import ndimage

from rsrs.core.files import atomic_path
from rsrs.pipeline.area import area_m2
from rsrs.pipeline.geometry import PixelWindow, RasterGrid
from rsrs.pipeline.geoparquet import geoparquet_writer
from rsrs.pipeline.mosaic import FILL, decode_probability

COLUMNS = ["scene_id", "query_id", "query", "score", "area_m2", "geometry"]
# The columns' types in every file, whatever pandas holds (object or str, rows or none): an empty run's file
# then reads together with any other (pyarrow.dataset, DuckDB), where Arrow's null type would not.
_STRING = pd.ArrowDtype(pa.string())
_DTYPES = {"scene_id": _STRING, "query_id": _STRING, "query": _STRING, "score": np.float64, "area_m2": np.float64}

# Shapes are traced in scene pixels: the core at the scene's origin has the identity transform on purpose, and
# rasterio's warning about it would reach the user's terminal from every worker. A process-wide filter, as tiles
# are polygonised on several threads at once (``catch_warnings`` is not thread-safe).
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning, module="rasterio.features")


@dataclass(frozen=True)
class TilePolygons:
    """Objects found in one tile core, in scene pixel coordinates (x = column, y = row).

    All arrays have one entry per polygon: ``query`` (index into the job's queries), ``geometry``
    (shapely polygons), ``prob_sum`` (sum of probabilities inside), ``n_pixels`` and ``on_edge`` (touches an
    internal core border, i.e. may continue in a neighbouring tile). ``skipped``: the tile had no valid pixels.
    """

    key: str
    query: np.ndarray
    geometry: np.ndarray
    prob_sum: np.ndarray
    n_pixels: np.ndarray
    on_edge: np.ndarray
    skipped: bool = False

    @classmethod
    def empty(cls, key: str, *, skipped: bool = False) -> TilePolygons:
        """A tile with no objects."""
        return cls(
            key=key,
            query=np.zeros(0, np.int32),
            geometry=_objects([]),
            prob_sum=np.zeros(0, np.float64),
            n_pixels=np.zeros(0, np.int64),
            on_edge=np.zeros(0, bool),
            skipped=skipped,
        )

    def __len__(self) -> int:
        return len(self.query)


def polygonise_codes(
    codes: np.ndarray,
    *,
    key: str,
    core: PixelWindow,
    scene_shape: tuple[int, int],
    threshold: float,
) -> TilePolygons:
    """Polygons of ``p > threshold`` in one core's stored codes (see ``rsrs.pipeline.mosaic``).

    codes: Q x H x W uint8 of the core (H x W = core); FILL pixels (no data) belong to no polygon. Working on
    the stored codes makes the polygons agree exactly with thresholding the mosaic a reader opens. Regions
    are 4-connected (as ``rasterio.features.shapes``), so diagonal neighbours are separate objects.
    """
    Q, H, W = codes.shape
    assert (H, W) == core.shape, (codes.shape, core)
    values = decode_probability(np.arange(256, dtype=np.uint8))  # code -> probability (NaN at FILL)
    inside = np.flatnonzero(values > threshold)  # codes inside an object: lowest..254 (codes grow with p)
    if inside.size == 0:
        return TilePolygons.empty(key)
    lowest = inside[0]
    weights = np.nan_to_num(values)
    parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    for q in range(Q):
        mask = (codes[q] >= lowest) & (codes[q] != FILL)  # H x W; comparisons, not a lookup: most masks are empty
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            continue
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # the objects' bounding box: GDAL's
        mask, code = mask[box], codes[q][box]  # polygonising costs per pixel, and objects are usually small
        labels, n = ndimage.label(mask)  # h x w int32: 4-connected regions 1..n
        to_scene_px = Affine.translation(core.col_off + cols[0], core.row_off + rows[0])  # box px -> scene px
        with warnings.catch_warnings():  # a box at the scene's origin translates by 0: no georeferencing is meant
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            shapes = features.shapes(labels, mask=mask, connectivity=4, transform=to_scene_px)
            geoms, ids = zip(*((_polygon(g), int(v)) for g, v in shapes), strict=True)
        region = labels[mask]  # the object pixels' region ids, row-major: the sums' order is the full image's
        prob_sum = np.bincount(region, weights=weights[code[mask]], minlength=n + 1)
        n_pixels = np.bincount(region, minlength=n + 1)
        order = np.asarray(ids)
        parts.append((q, _objects(geoms), prob_sum[order], n_pixels[order]))
    if not parts:
        return TilePolygons.empty(key)
    geometry = np.concatenate([p[1] for p in parts])
    return TilePolygons(
        key=key,
        query=np.concatenate([np.full(len(p[1]), p[0], np.int32) for p in parts]),
        geometry=geometry,
        prob_sum=np.concatenate([p[2] for p in parts]),
        n_pixels=np.concatenate([p[3] for p in parts]).astype(np.int64),
        on_edge=_touches_internal_border(geometry, core, scene_shape),
    )


def _polygon(geojson: dict) -> shapely.Polygon:
    """A GeoJSON polygon from ``features.shapes`` as shapely (arrays per ring: much faster than ``shape()``)."""
    shell, *holes = (np.asarray(ring, dtype=np.float64) for ring in geojson["coordinates"])
    return shapely.Polygon(shell, holes)


def _objects(items: Sequence[object]) -> np.ndarray:
    """A 1-D object array of ``items`` (numpy never looks inside them)."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _touches_internal_border(geoms: np.ndarray, core: PixelWindow, scene_shape: tuple[int, int]) -> np.ndarray:
    """True for polygons whose pixels reach a core side that another core lies beyond."""
    ny, nx = scene_shape
    minx, miny, maxx, maxy = shapely.bounds(geoms).T
    return (
        ((minx == core.col_off) & (core.col_off > 0))
        | ((miny == core.row_off) & (core.row_off > 0))
        | ((maxx == core.col_end) & (core.col_end < nx))
        | ((maxy == core.row_end) & (core.row_end < ny))
    )


def merge_tiles(tiles: Sequence[TilePolygons]) -> TilePolygons:
    """Merge, per query, polygons of neighbouring cores that share a border segment into one polygon.

    Input order decides output order (and vertex order), so the same tiles in the same order always give
    the same result. Corner-only contacts are not merged (as within a tile, regions are 4-connected).
    """
    query = np.concatenate([t.query for t in tiles]) if tiles else np.zeros(0, np.int32)
    if len(query) == 0:
        return TilePolygons.empty("merged")
    geometry = np.concatenate([t.geometry for t in tiles])
    prob_sum = np.concatenate([t.prob_sum for t in tiles])
    n_pixels = np.concatenate([t.n_pixels for t in tiles])
    on_edge = np.concatenate([t.on_edge for t in tiles])

    parent = np.arange(len(query))  # union-find over polygon indexes

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    edge_idx = np.flatnonzero(on_edge)
    if len(edge_idx):
        tree = shapely.STRtree(geometry[edge_idx])
        a, b = tree.query(geometry[edge_idx], predicate="intersects")
        keep = (a < b) & (query[edge_idx[a]] == query[edge_idx[b]])
        a, b = edge_idx[a[keep]], edge_idx[b[keep]]
        shared = shapely.length(shapely.intersection(geometry[a], geometry[b])) > 0
        for i, j in zip(a[shared], b[shared], strict=True):
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)

    roots = np.arange(len(query))
    roots[edge_idx] = [find(i) for i in edge_idx]  # a root is its group's first member
    order, counts = np.unique(roots, return_counts=True)
    merged_geoms = geometry[order]
    if (counts > 1).any():
        members = np.split(np.argsort(roots, kind="stable"), np.cumsum(counts)[:-1])
        for k in np.flatnonzero(counts > 1):
            merged_geoms[k] = shapely.union_all(geometry[members[k]])
    return TilePolygons(
        key="merged",
        query=query[order],
        geometry=merged_geoms,
        prob_sum=np.bincount(roots, weights=prob_sum)[order],
        n_pixels=np.bincount(roots, weights=n_pixels)[order].astype(np.int64),
        on_edge=np.zeros(len(order), bool),
    )


def polygon_frame(
    merged: TilePolygons,
    *,
    scene_id: str,
    grid: RasterGrid,
    query_ids: Sequence[str],
    query_texts: Sequence[str],
    min_area_m2: float,
    vector_crs: str,
) -> gpd.GeoDataFrame:
    """The output rows of one scene: geometry in ``vector_crs``, ``area_m2`` the area on the ground (see ``area``)."""
    t = grid.transform
    scene_geoms = shapely.transform(
        merged.geometry, lambda xy: np.column_stack([t.a * xy[:, 0] + t.b * xy[:, 1] + t.c,
                                                     t.d * xy[:, 0] + t.e * xy[:, 1] + t.f])
    )  # fmt: skip
    area = area_m2(scene_geoms, grid.crs)
    keep = area >= min_area_m2
    q = merged.query[keep]
    frame = gpd.GeoDataFrame(
        {
            "scene_id": np.full(int(keep.sum()), scene_id, dtype=object),
            "query_id": np.asarray(query_ids, dtype=object)[q],
            "query": np.asarray(query_texts, dtype=object)[q],
            "score": (merged.prob_sum[keep] / merged.n_pixels[keep]).astype(np.float64),
            "area_m2": area[keep],
        },
        geometry=gpd.GeoSeries(scene_geoms[keep], crs=grid.crs),
    )
    return frame.to_crs(vector_crs)


def empty_frame(vector_crs: str) -> gpd.GeoDataFrame:
    """A frame with the output columns and no rows (so an empty run still writes a valid file)."""
    columns = {c: pd.Series([], dtype=dtype) for c, dtype in _DTYPES.items()}
    return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries([], crs=vector_crs))


def write_geoparquet(frame: gpd.GeoDataFrame, path: Path) -> None:
    """Write GeoParquet 1.1 (PROJJSON CRS, bbox covering column) atomically; see :mod:`rsrs.pipeline.geoparquet`."""
    with geoparquet_writer(path, crs=frame.crs) as write:
        write(frame)


def save_tile(tile: TilePolygons, path: Path) -> None:
    """Store a tile's polygons (pixel frame, WKB) atomically; its presence marks the tile as done."""
    table = pa.table(
        {
            "query": pa.array(tile.query, pa.int32()),
            "geometry": pa.array(shapely.to_wkb(tile.geometry).tolist() if len(tile) else [], pa.binary()),
            "prob_sum": pa.array(tile.prob_sum, pa.float64()),
            "n_pixels": pa.array(tile.n_pixels, pa.int64()),
            "on_edge": pa.array(tile.on_edge, pa.bool_()),
        }
    ).replace_schema_metadata({"rsrs_tile": json.dumps({"key": tile.key, "skipped": tile.skipped})})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def load_tile(path: Path) -> TilePolygons:
    """Read back what :func:`save_tile` stored."""
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"rsrs_tile"])
    cols = table.to_pydict()
    return TilePolygons(
        key=meta["key"],
        query=np.asarray(cols["query"], np.int32),
        geometry=_objects(list(shapely.from_wkb(cols["geometry"]))),
        prob_sum=np.asarray(cols["prob_sum"], np.float64),
        n_pixels=np.asarray(cols["n_pixels"], np.int64),
        on_edge=np.asarray(cols["on_edge"], bool),
        skipped=meta["skipped"],
    )

"""GeoParquet 1.1 files of output polygons, written in row groups: any number of polygons in bounded memory.

Every file has the same Arrow schema (:data:`SCHEMA`, an empty file too) and GeoParquet 1.1 metadata (PROJJSON
CRS, the geometry types present, a ``bbox`` covering column), so the files of a folder -- ``rsrs run`` writes one
per scene into ``polygons.parquet/`` -- read as one table with ``geopandas.read_parquet(folder)``,
``pyarrow.dataset.dataset(folder)`` or DuckDB's ``read_parquet('folder/*.parquet')``. A file appears under its
name only when complete (:func:`rsrs.core.files.atomic_path`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyproj import CRS

from rsrs.core.files import atomic_path

_BBOX = pa.struct([(name, pa.float64()) for name in ("xmin", "ymin", "xmax", "ymax")])

#: The columns of every polygon file: ``scene_id, query_id, query, score, area_m2, geometry`` (+ ``bbox``).
SCHEMA = pa.schema(
    [
        ("scene_id", pa.string()),
        ("query_id", pa.string()),
        ("query", pa.string()),
        ("score", pa.float64()),
        ("area_m2", pa.float64()),
        ("geometry", pa.binary()),
        ("bbox", _BBOX),
    ]
)

_TYPE_NAMES = {0: "Point", 1: "LineString", 3: "Polygon", 4: "MultiPoint", 5: "MultiLineString", 6: "MultiPolygon",
               7: "GeometryCollection"}  # fmt: skip


@contextmanager
def geoparquet_writer(
    path: Path, *, crs: str | CRS, metadata: dict[str, str] | None = None
) -> Iterator[Callable[[gpd.GeoDataFrame], None]]:
    """Yield ``write(frame)``, which appends a frame (geometry in ``crs``) to ``path`` as one row group.

    The file gets its GeoParquet metadata (and ``metadata``, e.g. who wrote it) and replaces ``path`` when the
    block ends; a failure inside the block leaves ``path`` as it was.
    """
    projjson = CRS.from_user_input(crs).to_json_dict()
    types: set[str] = set()
    bounds = np.array([np.inf, np.inf, -np.inf, -np.inf])
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, SCHEMA, store_schema=False)  # so readers see the metadata added last
        try:

            def write(frame: gpd.GeoDataFrame) -> None:
                table = to_table(frame)
                writer.write_table(table)
                geoms = np.asarray(frame.geometry.values)
                types.update(_TYPE_NAMES.get(int(t), "Unknown") for t in np.unique(shapely.get_type_id(geoms)))
                if len(geoms):
                    box = shapely.bounds(geoms)  # N x 4
                    bounds[:2] = np.minimum(bounds[:2], np.nanmin(box[:, :2], axis=0))
                    bounds[2:] = np.maximum(bounds[2:], np.nanmax(box[:, 2:], axis=0))

            yield write
            column = {"encoding": "WKB", "crs": projjson, "geometry_types": sorted(types),
                      "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}}  # fmt: skip
            if np.isfinite(bounds).all():
                column["bbox"] = bounds.tolist()
            geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column},
                   "creator": {"library": "rsrs"}}  # fmt: skip
            writer.add_key_value_metadata({"geo": json.dumps(geo)} | (metadata or {}))
        finally:
            writer.close()


def to_table(frame: gpd.GeoDataFrame) -> pa.Table:
    """A polygon frame as an Arrow table of :data:`SCHEMA` (WKB geometry, bbox per row); the frame's own CRS is
    the caller's to record."""
    geoms = np.asarray(frame.geometry.values)
    box = shapely.bounds(geoms).reshape(-1, 4)  # N x 4: xmin, ymin, xmax, ymax
    columns = {name: pa.array(np.asarray(frame[name]), type=SCHEMA.field(name).type) for name in SCHEMA.names[:5]}
    columns["geometry"] = pa.array(shapely.to_wkb(geoms) if len(geoms) else [], pa.binary())
    columns["bbox"] = pa.StructArray.from_arrays([pa.array(box[:, i], pa.float64()) for i in range(4)],
                                                 fields=list(_BBOX))  # fmt: skip
    return pa.table(columns, schema=SCHEMA)

"""A run's polygons: ``polygons.parquet/`` holds one GeoParquet file per finished scene, written as it finishes.

A scene's file is streamed from its tile sidecars (``tiles/<scene_id>/<tile>.parquet``, which the workers wrote),
in tile order: polygons inside one tile core go out in row groups of at most :data:`BATCH_ROWS` as they are read;
only those touching an internal core border are kept until the scene's last tile, then merged across borders and
written last. So the client's memory holds one batch and a scene's border polygons, not a catalog's polygons, and
the same tiles always give the same file.

A file records the output settings it was written with (``output.vector_crs``, ``output.min_area_m2``); a rerun
keeps the files that match and rewrites the others from the sidecars. At the end of a run the folder holds exactly
the scenes run.json lists as done.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq

from rsrs.core.files import output_error
from rsrs.pipeline.geoparquet import geoparquet_writer
from rsrs.pipeline.polygons import TilePolygons, load_tile, merge_tiles, polygon_frame
from rsrs.pipeline.tasks import tile_path
from rsrs.workflows.job import Job
from rsrs.workflows.run_outputs import POLYGONS, TILES
from rsrs.workflows.run_plan import ScenePlan

#: Polygons converted and written at once (one row group): what bounds the client's memory per scene.
BATCH_ROWS = 20_000
_PART_KEY = "rsrs_part"

Framer = Callable[[TilePolygons], gpd.GeoDataFrame]
Writer = Callable[[gpd.GeoDataFrame], None]


def part_path(out: Path, scene_id: str) -> Path:
    """Where a scene's polygons go."""
    return out / POLYGONS / f"{scene_id}.parquet"


def _settings(job: Job) -> dict:
    """What decides a scene's polygon rows beyond its tiles."""
    return {"vector_crs": job.output.vector_crs, "min_area_m2": job.output.min_area_m2}


def existing_part(job: Job, out: Path, scene_id: str) -> int | None:
    """The row count of the scene's file when it exists and was written with this job's settings, else None."""
    path = part_path(out, scene_id)
    if not path.is_file():
        return None
    try:
        meta = pq.ParquetFile(path).metadata
        written = json.loads((meta.metadata or {}).get(_PART_KEY.encode(), b"{}"))
    except (OSError, ValueError):
        return None
    return meta.num_rows if written.get("settings") == _settings(job) else None


def write_part(job: Job, plan: ScenePlan, out: Path) -> int:
    """Stream a finished scene's polygons from its tile sidecars into its file; returns the number of rows."""
    frame_of = _framer(job, plan)
    tiles_dir = out / TILES / plan.id
    folder = out / POLYGONS
    try:
        if folder.is_file():  # one file for the whole run, as rsrs wrote it before it wrote one per scene
            folder.unlink()
        folder.mkdir(exist_ok=True)
    except OSError as err:
        raise output_error(folder, err) from None
    meta = {_PART_KEY: json.dumps({"scene_id": plan.id, "settings": _settings(job)})}
    rows = 0
    with geoparquet_writer(part_path(out, plan.id), crs=job.output.vector_crs, metadata=meta) as write:
        border: list[TilePolygons] = []
        batch: list[TilePolygons] = []
        for tile in plan.tiles:
            polygons = load_tile(tile_path(tiles_dir, tile))
            batch.append(_select(polygons, ~polygons.on_edge))
            border.append(_select(polygons, polygons.on_edge))
            if sum(map(len, batch)) >= BATCH_ROWS:
                rows += _write(write, frame_of, batch)
                batch = []
        rows += _write(write, frame_of, batch)
        rows += _write(write, frame_of, border)  # merged across core borders
    return rows


def _select(tile: TilePolygons, keep: np.ndarray) -> TilePolygons:
    """The tile's polygons where ``keep``."""
    return replace(tile, query=tile.query[keep], geometry=tile.geometry[keep], prob_sum=tile.prob_sum[keep],
                   n_pixels=tile.n_pixels[keep], on_edge=tile.on_edge[keep])  # fmt: skip


def _write(write: Writer, frame_of: Framer, tiles: Iterable[TilePolygons]) -> int:
    """Merge ``tiles`` (polygons sharing a core border become one) and write them as one row group."""
    frame = frame_of(merge_tiles(list(tiles)))
    if len(frame):
        write(frame)
    return len(frame)


def _framer(job: Job, plan: ScenePlan) -> Framer:
    """Merged tile polygons -> the scene's output rows."""
    ids, texts = [q.id for q in job.queries], [q.text for q in job.queries]

    def frame_of(merged: TilePolygons) -> gpd.GeoDataFrame:
        return polygon_frame(merged, scene_id=plan.id, grid=plan.scene.grid, query_ids=ids, query_texts=texts,
                             min_area_m2=job.output.min_area_m2, vector_crs=job.output.vector_crs)  # fmt: skip

    return frame_of


def prune_parts(out: Path, keep: set[str]) -> None:
    """Remove the files of scenes not in ``keep`` (scenes no longer done or no longer in the job)."""
    for path in (out / POLYGONS).glob("*.parquet") if (out / POLYGONS).is_dir() else ():
        if path.stem not in keep:
            path.unlink(missing_ok=True)

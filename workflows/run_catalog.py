"""The STAC catalog of a run: ``catalog.json`` (a Collection of the run) and ``items/<scene_id>.json``.

Any STAC tool (QGIS's STAC browser, stac-browser, pystac, rustac, a STAC API loader) can then find a run's
outputs: one Item per finished scene, with its footprint in EPSG:4326, its date (the input STAC item's, or
the run's when the input had none: ``rsrs:datetime_source`` says which), and assets for the Zarr mosaic
(xarray-assets: how to open it), each query's COG (raster and projection extensions), the polygons
(GeoParquet) and the overlay PNG. Every href between the run's files is relative, so the run folder can be
moved or uploaded as a whole; links to input items stay as the inputs named them.

The builders (:func:`scene_item`, :func:`run_collection`) are pure functions of plain values; only
:func:`write_run_catalog` touches the disk.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pystac
import rasterio
import shapely
from pyproj import CRS, Transformer
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from pystac.extensions.xarray_assets import XarrayAssetsExtension
from pystac.stac_io import DefaultStacIO

from rsrs.core.files import atomic_path
from rsrs.pipeline.geometry import RasterGrid
from rsrs.pipeline.mosaic import FILL, SCALE, VARIABLE
from rsrs.pipeline.scenes import Scene, safe_id
from rsrs.workflows.job import Job
from rsrs.workflows.run_outputs import CATALOG, ITEMS, MASKS
from rsrs.workflows.run_report import SceneReport, SceneStatus

#: Item assets of the COGs are named this plus the query id.
COG_ASSET_PREFIX = "probability-"
#: Points per footprint edge (enough for a projected grid's edges to stay true in EPSG:4326), and the
#: tolerance (degrees, about 1 cm) within which points on a straight line are dropped again.
EDGE_POINTS, STRAIGHT_DEG = 16, 1e-7


@dataclass(frozen=True)
class SceneOutputs:
    """Where one finished scene's outputs lie, as POSIX paths relative to the run folder.

    ``mosaic`` is the Zarr store (the scene is its group ``<scene_id>``); ``cogs`` maps query id -> COG;
    ``polygons`` is the GeoParquet holding the scene's polygons (rows with ``scene_id`` equal to the scene's);
    ``overlay`` the PNG picture. Anything left ``None``/empty gets no asset.
    """

    mosaic: str = MASKS
    cogs: Mapping[str, str] = field(default_factory=dict)
    polygons: str | None = None
    overlay: str | None = None


def footprint(grid: RasterGrid, *, edge_points: int = EDGE_POINTS) -> shapely.Polygon:
    """The grid's outline in EPSG:4326 (lon, lat), counter-clockwise (RFC 7946).

    Edges are densified before reprojecting, so a projected grid's curved edges stay true; points on a
    straight stretch are dropped again (a north-up EPSG:4326 grid keeps its 4 corners).
    """
    ny, nx = grid.shape
    steps = np.linspace(0.0, 1.0, edge_points, endpoint=False)
    cols = np.concatenate([steps * nx, np.full_like(steps, nx), (1 - steps) * nx, np.zeros_like(steps)])
    rows = np.concatenate([np.zeros_like(steps), steps * ny, np.full_like(steps, ny), (1 - steps) * ny])
    t = grid.transform
    xs, ys = t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f  # pixel corners -> CRS units
    lon, lat = Transformer.from_crs(CRS.from_user_input(grid.crs), 4326, always_xy=True).transform(xs, ys)
    outline = shapely.simplify(shapely.Polygon(np.column_stack([lon, lat])), STRAIGHT_DEG)
    return shapely.geometry.polygon.orient(outline, sign=1.0)


def _projection(asset: pystac.Asset, grid: RasterGrid) -> None:
    """Projection extension fields of a raster asset on ``grid``: code (else WKT2), shape, transform, bbox."""
    crs = CRS.from_user_input(grid.crs)
    authority = crs.to_authority()
    ProjectionExtension.ext(asset, add_if_missing=True).apply(
        code=":".join(authority) if authority else None,
        wkt2=None if authority else crs.to_wkt(),
        shape=list(grid.shape),
        transform=list(grid.transform)[:6],
        bbox=list(grid.bounds),
    )


def _from_item(path: str) -> str:
    """A run-relative path as seen from an item file in :data:`ITEMS`."""
    return posixpath.relpath(path, ITEMS)


def _datetimes(scene: Scene, started: datetime) -> tuple[datetime | None, dict]:
    """The item's ``datetime`` and date properties: the input item's instant or range, else the run start."""
    if scene.datetime is None:
        return started, {"rsrs:datetime_source": "run start (the input has no acquisition time)"}
    source = {"rsrs:datetime_source": "input STAC item"}
    if "/" not in scene.datetime:
        return datetime.fromisoformat(scene.datetime), source
    start, end = (None if part == ".." else part for part in scene.datetime.split("/"))
    return None, source | {"start_datetime": start, "end_datetime": end}


def scene_item(
    scene: Scene, *, job: Job, outputs: SceneOutputs, started: datetime, report: SceneReport | None = None
) -> pystac.Item:
    """The STAC Item of one finished scene, its asset hrefs relative to ``items/<scene_id>.json``.

    ``started``: when the run started (timezone-aware; dates the item when the input has no date, and is its
    ``created``); ``report``: the scene's run.json entry (polygon count, IoU against truths).
    """
    geometry = footprint(scene.grid)
    when, dates = _datetimes(scene, started)
    properties = {"created": started.isoformat(), "rsrs:source": scene.source} | dates
    if report is not None:
        properties["rsrs:polygons"] = report.polygons
        if report.truth_iou:
            properties["rsrs:truth_iou"] = dict(report.truth_iou)
    item = pystac.Item(
        id=scene.id,
        geometry=shapely.geometry.mapping(geometry),
        bbox=list(geometry.bounds),
        datetime=when,
        properties=properties,
    )
    texts = {q.id: q.text for q in job.queries}
    ids = ", ".join(texts)
    mosaic = pystac.Asset(
        _from_item(outputs.mosaic),
        title="Probability mosaic (Zarr)",
        description=f"Variable '{VARIABLE}' (query, y, x) for queries {ids}: uint8 codes decoding to "
        f"probabilities in [0, 1] (scale {SCALE:.10g}), NaN where the input had no data.",
        media_type=pystac.MediaType.VND_ZARR,
        roles=["data"],
    )
    item.add_asset("probability", mosaic)
    XarrayAssetsExtension.ext(mosaic, add_if_missing=True).open_kwargs = {
        "engine": "zarr",
        "group": scene.id,
        "decode_coords": "all",
    }
    _projection(mosaic, scene.grid)
    add_cog_assets(item, outputs.cogs, texts=texts, grid=scene.grid)
    if outputs.polygons is not None:
        item.add_asset(
            "polygons",
            pystac.Asset(
                _from_item(outputs.polygons),
                title="Polygons (GeoParquet)",
                description=f"Polygons where p > {job.output.threshold} for queries {ids}, in "
                f"{job.output.vector_crs}; this scene's rows have scene_id == '{scene.id}'.",
                media_type=pystac.MediaType.VND_APACHE_PARQUET,
                roles=["data"],
            ),
        )
    if outputs.overlay is not None:
        item.add_asset(
            "overlay",
            pystac.Asset(
                _from_item(outputs.overlay),
                title="Overlay: the scene with each query's mask and polygons",
                media_type=pystac.MediaType.PNG,
                roles=["overview"],
            ),
        )
    if scene.item_href is not None:
        item.add_link(pystac.Link("derived_from", scene.item_href, pystac.MediaType.JSON, "input STAC item"))
    return item


def add_cog_assets(item: pystac.Item, cogs: Mapping[str, str], *, texts: Mapping[str, str], grid: RasterGrid) -> None:
    """Give ``item`` an asset ``probability-<query id>`` per COG (``cogs``: query id -> path relative to the run
    folder), with the raster and projection extensions of ``grid``."""
    for qid, path in cogs.items():
        cog = pystac.Asset(
            _from_item(path),
            title=f"{qid}: {texts[qid]}",
            description=f"Probability that a pixel shows '{texts[qid]}' (uint8 codes; value x scale = probability).",
            media_type=pystac.MediaType.COG,
            roles=["data"],
        )
        item.add_asset(f"{COG_ASSET_PREFIX}{qid}", cog)
        _projection(cog, grid)
        band = RasterBand.create(
            nodata=FILL, data_type=DataType.UINT8, scale=SCALE, offset=0.0, spatial_resolution=grid.resolution[1]
        )
        RasterExtension.ext(cog, add_if_missing=True).bands = [band]


def _description(queries: int, scenes: int, *, cogs: bool) -> str:
    """The collection's description: what each scene of the run has."""
    rasters = "a probability mosaic (Zarr), probability COGs per query" if cogs else "a probability mosaic (Zarr)"
    return (
        f"Referring segmentation of {queries} queries over {scenes} scene(s) by rsrs: per scene {rasters} and "
        "polygons (GeoParquet)."
    )


def run_collection(
    items: Sequence[pystac.Item], *, job: Job, collection_id: str, started: datetime
) -> pystac.Collection:
    """The run as a STAC Collection of ``items``: their extent, the job's queries, model and checkpoint.

    Links ``derived_from`` every input STAC item the scenes came from. With no items the extent is the run
    start and the whole globe (a run whose every scene failed still gets a valid, empty catalog).
    """
    bounds = np.array([item.bbox for item in items]) if items else np.array([[-180.0, -90.0, 180.0, 90.0]])
    bbox = [*bounds[:, :2].min(axis=0), *bounds[:, 2:].max(axis=0)]
    times = [t for item in items for t in _interval(item)] or [started]
    model = job.model.model_dump(exclude_none=True)
    collection = pystac.Collection(
        id=collection_id,
        title=f"rsrs run {collection_id}",
        description=_description(len(job.queries), len(items), cogs=any(map(_has_cogs, items))),
        extent=pystac.Extent(
            pystac.SpatialExtent([[float(v) for v in bbox]]), pystac.TemporalExtent([[min(times), max(times)]])
        ),
        license="other",
        providers=[pystac.Provider("rsrs", roles=[pystac.ProviderRole.PROCESSOR], description=_model_line(job))],
        extra_fields={
            "rsrs:queries": [{"id": q.id, "text": q.text} for q in job.queries],
            "rsrs:model": model,
            "rsrs:threshold": job.output.threshold,
        }
        | ({"rsrs:job_file": job.source} if job.source else {}),
    )
    inputs = dict.fromkeys(link.href for item in items for link in item.links if link.rel == "derived_from")
    for href in inputs:
        collection.add_link(pystac.Link("derived_from", href, pystac.MediaType.JSON, "input STAC item"))
    return collection


def _has_cogs(item: pystac.Item) -> bool:
    return any(key.startswith(COG_ASSET_PREFIX) for key in item.assets)


def _model_line(job: Job) -> str:
    """``model rsrefseg-b, checkpoint runs/ft/best.safetensors``."""
    line = f"model {job.model.name}"
    return line + (f", checkpoint {job.model.checkpoint}" if job.model.checkpoint else "")


def _interval(item: pystac.Item) -> list[datetime]:
    """The instants that bound an item's time: its datetime, or its start and end."""
    if item.datetime is not None:
        return [item.datetime]
    meta = item.common_metadata
    return [t for t in (meta.start_datetime, meta.end_datetime) if t is not None]


class _AtomicStacIO(DefaultStacIO):
    """pystac's file writer, writing each JSON under a temporary name first (readers never see half a file)."""

    def write_text_to_href(self, href: str, txt: str) -> None:  # noqa: D102
        path = Path(href)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(txt, encoding="utf-8")


def write_run_catalog(
    out_dir: Path,
    *,
    job: Job,
    scenes: Sequence[Scene],
    reports: Sequence[SceneReport],
    outputs: Mapping[str, SceneOutputs],
    started: datetime,
    collection_id: str | None = None,
) -> Path:
    """Write the run's catalog into ``out_dir`` and return the path of ``catalog.json``.

    An item is written for each scene whose report says ``done``; ``outputs`` gives its files (scene id ->
    :class:`SceneOutputs`; a scene not in it gets the Zarr asset only). Items of scenes no longer in the
    run are removed; ``catalog.json`` is written last. ``collection_id`` defaults to ``rsrs-<folder name>``.
    """
    out_dir = Path(out_dir)
    done = {r.id for r in reports if r.status is SceneStatus.DONE}
    by_id = {r.id: r for r in reports}
    items = [
        scene_item(s, job=job, outputs=outputs.get(s.id, SceneOutputs()), started=started, report=by_id.get(s.id))
        for s in scenes
        if s.id in done
    ]
    collection = run_collection(
        items, job=job, collection_id=collection_id or f"rsrs-{safe_id(out_dir.resolve().name)}", started=started
    )
    collection.add_items(items)
    collection.set_self_href(str(out_dir / CATALOG))
    for item in items:
        item.set_self_href(str(out_dir / ITEMS / f"{item.id}.json"))
    collection.save(pystac.CatalogType.SELF_CONTAINED, stac_io=_AtomicStacIO())
    for stale in set((out_dir / ITEMS).glob("*.json")) - {out_dir / ITEMS / f"{i.id}.json" for i in items}:
        stale.unlink()
    return out_dir / CATALOG


def add_cogs_to_catalog(out_dir: Path, cogs: Mapping[str, Mapping[str, Path]]) -> Path | None:
    """List COGs written after the run (``rsrs export --cog``; scene id -> query id -> path) in the run's catalog.

    Each scene's grid is read from its COGs, which carry the mosaic's. Returns the catalog's path, or None when the
    folder has no catalog (a run from before rsrs wrote them).
    """
    out_dir = Path(out_dir)
    if not (out_dir / CATALOG).is_file():
        return None
    collection = pystac.read_file(out_dir / CATALOG)
    texts = {q["id"]: q["text"] for q in collection.extra_fields["rsrs:queries"]}
    items = list(collection.get_items())
    for item in items:
        paths = cogs.get(item.id, {})
        if paths:
            with rasterio.open(next(iter(paths.values()))) as src:
                grid = RasterGrid(src.shape, src.transform, src.crs.to_string() if src.crs else None)
            relative = {
                qid: Path(path).resolve().relative_to(out_dir.resolve()).as_posix() for qid, path in paths.items()
            }
            add_cog_assets(item, relative, texts=texts, grid=grid)
    collection.description = _description(len(texts), len(items), cogs=any(map(_has_cogs, items)))
    collection.save(pystac.CatalogType.SELF_CONTAINED, stac_io=_AtomicStacIO())
    return out_dir / CATALOG

"""One large georeferenced synthetic scene with its expressions, true masks and polygons.

Writes ``DIR/scene.tif`` (RGB GeoTIFF, tiled, deflate), ``DIR/expressions.json`` (``[{id, text, category,
form, targets}]``), ``DIR/masks/<id>.tif`` (uint8 0/1 on the scene's grid: the visible pixels of the targets)
and ``DIR/objects.geojson`` (every object's whole polygon in the scene CRS with its attributes and the ids of
the expressions that refer to it). Rendering runs in strips of ``block`` rows, so memory stays at a few strips
whatever the scene size.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from affine import Affine
from shapely import affinity

from rsrs.pipeline.geometry import PixelWindow, RasterGrid
from rsrs.pipeline.synth.expressions import Expression, choose_expressions, plural_expressions, singular_expressions
from rsrs.pipeline.synth.layout import Layout, generate_layout
from rsrs.pipeline.synth.render import SceneRenderer

DEFAULT_CRS = "EPSG:32614"  # UTM 14N: North Dakota, a NAIP-like setting
DEFAULT_ORIGIN = (600_000.0, 5_250_000.0)  # top-left corner (x, y), m

if TYPE_CHECKING:
    import geopandas as gpd


def scene_grid(size: int, *, pixel_size: float = 0.5, crs: str = DEFAULT_CRS) -> RasterGrid:
    """The ``size`` x ``size`` grid of a synthetic scene: north-up, ``pixel_size`` m pixels."""
    x0, y0 = DEFAULT_ORIGIN
    return RasterGrid(shape=(size, size), transform=Affine(pixel_size, 0, x0, 0, -pixel_size, y0), crs=crs)


def scene_expressions(layout: Layout, rng: np.random.Generator, *, max_singular: int = 24) -> list[Expression]:
    """Scene-wide plural queries plus up to ``max_singular`` one-target expressions."""
    singular = choose_expressions(rng, singular_expressions(layout.objects, layout.shape), max_singular)
    return plural_expressions(layout.objects) + singular


def _objects_frame(layout: Layout, expressions: dict[str, Expression], grid: RasterGrid) -> gpd.GeoDataFrame:
    import geopandas as gpd  # only scenes write vector files; chip datasets need no GIS stack

    t = grid.transform
    refs: dict[int, list[str]] = {}
    for eid, e in expressions.items():
        for target in e.targets:
            refs.setdefault(target, []).append(eid)
    objects = layout.objects
    return gpd.GeoDataFrame(
        {
            "id": [o.id for o in objects],
            "category": [o.category for o in objects],
            "colour": [o.colour for o in objects],
            "area_m2": [round(o.area * grid.pixel_area, 2) for o in objects],
            "expressions": [",".join(refs.get(o.id, [])) for o in objects],
        },
        geometry=[affinity.affine_transform(o.geometry, [t.a, t.b, t.d, t.e, t.c, t.f]) for o in objects],
        crs=grid.crs,
    )


def write_scene(
    out_dir: str | Path,
    *,
    size: int = 8192,
    seed: int = 0,
    pixel_size: float = 0.5,
    block: int = 512,
    on_rows: Callable[[int], None] | None = None,
) -> Path:
    """Write a ``size`` x ``size`` scene and its truth under ``out_dir``; returns the path of ``scene.tif``."""
    out = Path(out_dir)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0])
    grid = scene_grid(size, pixel_size=pixel_size)
    layout = generate_layout(rng, grid.shape)
    expressions = {f"e{k:03d}": e for k, e in enumerate(scene_expressions(layout, rng))}
    renderer = SceneRenderer(layout, seed=seed)
    boxes = {o.id: o.geometry.bounds for o in layout.objects}
    # Per expression: a look-up "is this object id a target" and the rows its targets span.
    hits, rows = {}, {}
    for eid, e in expressions.items():
        hits[eid] = np.zeros(len(layout.objects) + 1, dtype=bool)
        hits[eid][list(e.targets)] = True
        rows[eid] = (min(boxes[i][1] for i in e.targets), max(boxes[i][3] for i in e.targets))
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "crs": grid.crs,
        "transform": grid.transform,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "dtype": "uint8",
    }
    with ExitStack() as stack:
        image_ds = stack.enter_context(rasterio.open(out / "scene.tif", "w", count=3, photometric="RGB", **profile))
        mask_ds = {
            eid: stack.enter_context(rasterio.open(out / "masks" / f"{eid}.tif", "w", count=1, **profile))
            for eid in expressions
        }
        for row_off in range(0, size, block):
            window = PixelWindow(row_off, 0, min(block, size - row_off), size)
            labels = renderer.labels(window)
            image_ds.write(renderer.image(window, labels).transpose(2, 0, 1), window=_rio(window))  # (3, h, w)
            owners = renderer.objects(labels)
            for eid, ds in mask_ds.items():
                y0, y1 = rows[eid]
                if y1 >= window.row_off and y0 <= window.row_end:  # blocks never written stay 0
                    ds.write(hits[eid][owners].astype(np.uint8), 1, window=_rio(window))
            if on_rows is not None:
                on_rows(window.height)
    records = [
        {"id": eid, "text": e.text, "category": e.category, "form": e.form, "targets": list(e.targets)}
        for eid, e in expressions.items()
    ]
    (out / "expressions.json").write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    _objects_frame(layout, expressions, grid).to_file(out / "objects.geojson", driver="GeoJSON")
    return out / "scene.tif"


def _rio(window: PixelWindow) -> rasterio.windows.Window:
    return rasterio.windows.Window(window.col_off, window.row_off, window.width, window.height)

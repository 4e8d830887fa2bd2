"""A picture of one scene's results: the image, each query's mask in its own colour, polygon outlines, a legend.

The scene (in strips of rows) and its mosaic (chunk by chunk) are reduced by whole blocks of ``step`` x
``step`` pixels (image: mean, mask: any pixel above the threshold), so the preview's longer side is at
most :data:`MAX_SIDE` and memory stays bounded whatever the scene size. Drawn with matplotlib's object
API on the Agg canvas (no pyplot state).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import xarray as xr

from rsrs.pipeline.geometry import PixelWindow
from rsrs.pipeline.reading import read_tile
from rsrs.pipeline.scenes import Scene
from rsrs.workflows.job import Query

#: Longest side of the preview, in preview pixels (one per figure pixel).
MAX_SIDE = 1600
#: Narrower previews are drawn enlarged to this width, so the legend stays legible.
MIN_WIDTH = 800
#: Figure pixels per legend line (the title line plus one per query) and around the legend.
LEGEND_ROW_PX, LEGEND_PAD_PX = 26, 16
DPI = 100
#: Mask fill opacity; outlines are opaque.
ALPHA = 0.5
#: Scene rows read per strip are about this many (a multiple of the step).
STRIP_ROWS = 512


def preview_step(shape: tuple[int, int]) -> int:
    """Scene pixels per preview pixel (each way) so that the preview's longer side is at most MAX_SIDE."""
    ny, nx = shape
    return max(1, -(-max(ny, nx) // MAX_SIDE))


def figure_size(shape: tuple[int, int], n_queries: int) -> tuple[int, int]:
    """``(height, width)`` in pixels of the overlay PNG of a scene of ``shape`` (ny, nx) with ``n_queries``."""
    step = preview_step(shape)
    ny, nx = (-(-n // step) for n in shape)
    width = max(nx, MIN_WIDTH)
    return round(ny * width / nx) + _legend_height(n_queries), width


def _legend_height(n_queries: int) -> int:
    return 2 * LEGEND_PAD_PX + LEGEND_ROW_PX * (n_queries + 1)


def _block_mean(values: np.ndarray, step: int) -> np.ndarray:
    """(..., h, w) -> (..., ceil(h/step), ceil(w/step)) float32 block means (edges padded with 0)."""
    *lead, h, w = values.shape
    H, W = -(-h // step), -(-w // step)
    padded = np.pad(values, [(0, 0)] * len(lead) + [(0, H * step - h), (0, W * step - w)])
    return padded.reshape(*lead, H, step, W, step).mean(axis=(-3, -1), dtype=np.float32)


def read_preview(scene: Scene, probability: xr.DataArray, *, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The scene as ``rgb`` (h, w, 3) uint8 and the masks ``p > threshold`` as (Q, h, w) bool, both reduced.

    probability: the scene's mosaic, (query, y, x) in [0, 1] with NaN for no data; lazy (Dask), it is
    reduced chunk by chunk.
    """
    ny, nx = scene.grid.shape
    step = preview_step((ny, nx))
    rows = max(1, STRIP_ROWS // step) * step
    strips = []
    for r0 in range(0, ny, rows):
        rgb, _ = read_tile(scene, PixelWindow(r0, 0, min(rows, ny - r0), nx))  # (3, h, nx) uint8
        strips.append(_block_mean(rgb, step))
    rgb = np.concatenate(strips, axis=1).round().astype(np.uint8).transpose(1, 2, 0)  # (h', w', 3)
    hit = (probability > threshold).astype(np.float32)  # NaN (no data) > t is False
    masks = hit.coarsen(y=step, x=step, boundary="pad").max().values > 0  # (Q, h', w'); pads are NaN
    return rgb, masks


def write_overlay(
    path: str | Path,
    *,
    scene: Scene,
    probability: xr.DataArray,
    polygons: gpd.GeoDataFrame,
    queries: Sequence[Query],
    threshold: float,
    ious: Mapping[str, float] | None = None,
    title: str = "",
) -> Path:
    """Write ``path`` (PNG): the scene, each query's mask and polygon outlines, and a legend of the queries.

    ``polygons`` are the scene's (any CRS; ``query_id`` says whose), ``ious`` the IoU against the truth per
    query id, where known. The PNG is :func:`figure_size` pixels.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rgb, masks = read_preview(scene, probability, threshold=threshold)
    h, w = rgb.shape[:2]
    step = preview_step(scene.grid.shape)
    fig_h, fig_w = figure_size(scene.grid.shape, len(queries))
    legend_h = _legend_height(len(queries))
    fig = Figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI)
    ax = fig.add_axes((0, legend_h / fig_h, 1, 1 - legend_h / fig_h))
    ax.imshow(rgb, extent=(0, w, h, 0), interpolation="antialiased")
    outlines = _in_preview_pixels(polygons, scene, step)
    colours = [_colour(k) for k in range(len(queries))]
    handles = []
    for k, query in enumerate(queries):
        ax.imshow(
            np.ma.masked_where(~masks[k], masks[k]),
            cmap=ListedColormap([colours[k]]),
            alpha=ALPHA,
            extent=(0, w, h, 0),
            interpolation="nearest",
        )
        mine = outlines[outlines["query_id"] == query.id]
        if len(mine):
            mine.boundary.plot(ax=ax, color=colours[k], linewidth=1.5)
        iou = (ious or {}).get(query.id)
        label = f'"{query.text}"' + (f"   IoU vs truth {iou:.2f}" if iou is not None else "")
        handles.append(Patch(facecolor=colours[k], edgecolor=colours[k], alpha=0.8, label=label))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    legend_ax = fig.add_axes((0, 0, 1, legend_h / fig_h))
    legend_ax.set_axis_off()
    legend_ax.legend(
        handles=handles,
        title=title or None,
        loc="upper left",
        frameon=False,
        fontsize=11,
        title_fontsize=11,
        alignment="left",
        borderaxespad=0.6,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _colour(k: int) -> str:
    """The k-th query's colour: saturated hues that stand out on vegetation, soil, water and roofs."""
    palette = ("#ff00ff", "#00e5ff", "#ffd400", "#ff6a00", "#ffffff", "#7cff00", "#8000ff", "#ff0040")
    return palette[k % len(palette)]


def _in_preview_pixels(polygons: gpd.GeoDataFrame, scene: Scene, step: int) -> gpd.GeoDataFrame:
    """``polygons`` moved into the preview's pixel frame (scene CRS -> scene pixels -> / step)."""
    if polygons.empty:
        return polygons
    if scene.grid.crs is not None and polygons.crs is not None:
        polygons = polygons.to_crs(scene.grid.crs)
    inv = ~scene.grid.transform
    matrix = [inv.a / step, inv.b / step, inv.d / step, inv.e / step, inv.c / step, inv.f / step]
    moved = polygons.geometry.affine_transform(matrix).to_numpy()  # drops the CRS: these are pixels now
    return gpd.GeoDataFrame({"query_id": polygons["query_id"].to_numpy()}, geometry=moved)

"""Scoring a run against known answers: the IoU of each query's thresholded mosaic and its true mask.

A query's ``truth`` is a single-band raster on its scene's grid, 0 off the target and non-zero (1 or 255) on
it. The prediction is ``probability > output.threshold`` with NaN (no valid input) counting as 0. Both are
read in strips of mosaic chunk rows, so memory stays bounded whatever the scene size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import ExitStack

import numpy as np
import xarray as xr
from rasterio.crs import CRS
from rasterio.windows import Window

from rsrs.core.errors import InputDataError
from rsrs.pipeline.geometry import RasterGrid
from rsrs.pipeline.scenes import Scene, open_raster
from rsrs.workflows.job import Query
from rsrs.workflows.metrics import SampleScore


class TruthGridError(InputDataError):
    """A query's true mask is not on the grid of the scene it is compared with."""


def _grid_mismatch(dataset, grid: RasterGrid) -> str | None:
    """What differs between an open raster's grid and ``grid`` (size, transform or CRS), or None."""
    if dataset.shape != grid.shape:
        return f"it is {dataset.shape[0]} x {dataset.shape[1]} px, the scene {grid.shape[0]} x {grid.shape[1]}"
    if not dataset.transform.almost_equals(grid.transform):
        return f"its transform {tuple(dataset.transform)[:6]} differs from the scene's {tuple(grid.transform)[:6]}"
    if grid.crs is not None and dataset.crs != CRS.from_user_input(grid.crs):
        return f"its CRS {dataset.crs} differs from the scene's {grid.crs}"
    return None


def check_truths(queries: Iterable[Query], scenes: Iterable[Scene]) -> None:
    """Fail before any model runs when a query's truth is unreadable or off the grid of a scene."""
    scenes = list(scenes)
    for query in queries:
        if query.truth is None:
            continue
        with open_raster(query.truth) as dataset:
            for scene in scenes:
                mismatch = _grid_mismatch(dataset, scene.grid)
                if mismatch is not None:
                    raise TruthGridError(
                        f"truth {query.truth} of query '{query.id}' is not on the grid of scene '{scene.id}' "
                        f"({mismatch}); give a mask on the scene's grid, or run that scene in a job without truths"
                    )


def score_truths(probability: xr.DataArray, queries: Sequence[Query], *, threshold: float) -> dict[str, SampleScore]:
    """Overlap of each query's thresholded mosaic with its truth, for the queries that have one.

    probability: (query, y, x) float in [0, 1], NaN where the input had no valid pixels (a scene's mosaic,
    lazy); its grid must be the truths' (see :func:`check_truths`).
    """
    scored = [q for q in queries if q.truth is not None]
    if not scored:
        return {}
    ids = [str(v) for v in probability["query"].values]
    index = [ids.index(q.id) for q in scored]
    counts = np.zeros((len(scored), 2), dtype=np.int64)  # intersection, union per query
    bounds = np.cumsum((0, *probability.chunksizes["y"])) if probability.chunks else (0, probability.sizes["y"])
    nx = probability.sizes["x"]
    with ExitStack() as stack:
        truths = [stack.enter_context(open_raster(q.truth)) for q in scored]  # type: ignore[arg-type]
        for query, dataset in zip(scored, truths, strict=True):
            if dataset.shape != (probability.sizes["y"], nx):
                raise TruthGridError(
                    f"truth {query.truth} of query '{query.id}' is {dataset.shape[0]} x {dataset.shape[1]} px but "
                    f"the mosaic is {probability.sizes['y']} x {nx}; give a mask on the scene's grid"
                )
        for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True):
            strip = probability.isel(query=index, y=slice(int(r0), int(r1))).values  # (Qt, h, nx)
            for k, dataset in enumerate(truths):
                truth = dataset.read(1, window=Window(0, int(r0), nx, int(r1 - r0))) > 0  # (h, nx)
                predicted = strip[k] > threshold  # NaN > t is False: no data counts as background
                counts[k] += (np.count_nonzero(predicted & truth), np.count_nonzero(predicted | truth))
    return {
        q.id: SampleScore(id=q.id, intersection=int(inter), union=int(union))
        for q, (inter, union) in zip(scored, counts, strict=True)
    }

"""Per-scene probability mosaics in Zarr: ``masks.zarr/<scene_id>/probability`` with dims (query, y, x).

The client creates each scene's group once with xarray (coordinates, CF grid mapping in a ``spatial_ref``
coordinate, encoding); tasks then write tile cores straight into their own chunks with zarr. A chunk is
exactly one tile core (see :mod:`rsrs.pipeline.tiling`), so every chunk is written once by one task: no
locks, no seams, and rewriting a chunk is harmless.

Storage: uint8 with ``scale_factor = 1/254`` and fill value 255, so readers decode float probabilities in
[0, 1] and NaN where the input had no valid pixels (unwritten chunks, e.g. all-nodata tiles, read as NaN).
Zarr format 2 with fixed-width text coordinates, so GDAL opens the array too (``ZARR:"masks.zarr":/<scene_id>/
probability``: a band per query, whose metadata ``DIM_query_VALUE`` is the query's id), besides xarray.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import xarray as xr
import zarr

from rsrs.core.errors import ConfigError
from rsrs.core.files import output_error
from rsrs.pipeline.geometry import PixelWindow, RasterGrid

VARIABLE = "probability"
FILL = 255
SCALE = 1 / 254
#: Group attribute naming everything that decided the chunk contents (see :func:`create_mosaic`).
FINGERPRINT_ATTR = "rsrs_fingerprint"
_SOURCE_ATTR = "rsrs_source"
# Zarr v2: GDAL 3.10 (rasterio's wheels) reads no Zarr v3 array (it lacks the "bytes" codec), and GDAL 3.12
# reads no v3 string array, so a v3 mosaic showed GDAL no query ids, or nothing at all.
_ZARR_FORMAT = 2
ArrayLike = TypeVar("ArrayLike")  # a numpy array or a torch tensor


def quantise(probs: ArrayLike) -> ArrayLike:
    """Probabilities in [0, 1] -> codes 0..254 (still floating point), for numpy arrays and torch tensors alike.

    One formula for both, so a GPU worker quantises on the device before copying to the host (a quarter of
    the bytes of float32) with exactly the arithmetic of :func:`encode_probability`.
    """
    return (probs.clip(0.0, 1.0) * (FILL - 1)).round()  # round half to even in numpy and torch


def mark_nodata(codes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Set FILL where ``valid`` (H x W) is False, in place; codes: Q x H x W uint8. Returns ``codes``."""
    assert valid.shape == codes.shape[1:], (valid.shape, codes.shape)
    codes[:, ~valid] = FILL
    return codes


def encode_probability(probs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Quantise probabilities to the stored uint8 form.

    probs: Q x H x W float in [0, 1]; valid: H x W bool. Returns Q x H x W uint8 (FILL where not valid).
    """
    return mark_nodata(quantise(np.asarray(probs)).astype(np.uint8), valid)


def decode_probability(codes: np.ndarray) -> np.ndarray:
    """The probabilities a CF reader (xarray) decodes from stored ``codes``: float64, NaN at FILL."""
    return np.where(codes == FILL, np.nan, codes * SCALE)


def mosaic_template(
    grid: RasterGrid, *, query_ids: Sequence[str], query_texts: Sequence[str], chunk_size: int
) -> xr.Dataset:
    """A lazy all-NaN dataset with the mosaic's coordinates, grid mapping and encoding (nothing computed)."""
    import dask.array as da
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    ny, nx = grid.shape
    t = grid.transform
    # pixel-centre coordinates of a north-up grid (rotated grids keep their transform in spatial_ref)
    x = t.c + t.a * (np.arange(nx) + 0.5)
    y = t.f + t.e * (np.arange(ny) + 0.5)
    Q = len(query_ids)
    data = da.full((Q, ny, nx), np.nan, chunks=(Q, chunk_size, chunk_size), dtype=np.float32)
    prob = xr.DataArray(
        data,
        dims=("query", "y", "x"),
        coords={
            # fixed-width text, which GDAL reads (not variable-length): its bands then carry DIM_query_VALUE=<id>
            "query": np.array(list(query_ids), dtype=str),
            "query_text": ("query", np.array(list(query_texts), dtype=str)),
            "y": y,
            "x": x,
        },
        name=VARIABLE,
        attrs={"long_name": "probability that the pixel shows what the query describes", "units": "1"},
    )
    if grid.crs is not None:
        # CF attributes of x and y from the CRS: standard_name projection_x_coordinate or longitude, units, axis
        prob = prob.rio.write_crs(grid.crs).rio.write_coordinate_system()
    prob = prob.rio.write_transform(t)  # sets encoding["grid_mapping"] = "spatial_ref"
    prob.encoding.update(
        {"dtype": "uint8", "scale_factor": SCALE, "_FillValue": FILL, "fill_value": FILL}
        | {"chunks": (Q, chunk_size, chunk_size)}
    )
    assert prob.encoding.get("grid_mapping") == "spatial_ref"
    return prob.to_dataset()


def create_mosaic(
    store: Path,
    scene_id: str,
    grid: RasterGrid,
    *,
    query_ids: Sequence[str],
    query_texts: Sequence[str],
    chunk_size: int,
    fingerprint: str,
    source: str,
) -> bool:
    """Create the scene's group unless a compatible one exists; True when created.

    ``fingerprint`` names everything that decides the chunk contents (model, queries, tiling, threshold, the
    scene's pixels); ``source`` is where the scene came from. A group with another fingerprint belongs to a
    different job or scene: raise (saying which) rather than mix the two.
    """
    existing = _stored(store, scene_id)
    if existing is not None and existing.get(FINGERPRINT_ATTR) == fingerprint:
        return False
    if existing is not None:
        before = existing.get(_SOURCE_ATTR)
        what = (
            f"holds scene '{scene_id}' of {before}, but this job's scene '{scene_id}' is {source} (scene ids follow "
            "the file names and the order of the inputs)"
            if before != source
            else "was written for other settings (model, queries, tiling, threshold or the scene's bands/scaling)"
        )
        raise ConfigError(f"{store}/{scene_id} {what}; rerun with --overwrite or choose another output.dir")
    ds = mosaic_template(grid, query_ids=query_ids, query_texts=query_texts, chunk_size=chunk_size)
    ds.attrs[FINGERPRINT_ATTR] = fingerprint
    ds.attrs[_SOURCE_ATTR] = source
    ds.to_zarr(store, group=scene_id, mode="w", compute=False, zarr_format=_ZARR_FORMAT, consolidated=False)
    return True


def consolidate_mosaics(store: Path) -> None:
    """Index every scene group's metadata in the store's root, so readers open a scene with one read.

    Once per run, at its end: xarray's default consolidates the whole store at every scene group it writes, which
    costs a pass over every earlier scene each time (minutes per scene at a thousand scenes).
    """
    try:
        zarr.consolidate_metadata(store, zarr_format=_ZARR_FORMAT)
    except OSError as err:
        raise output_error(store, err) from None


def store_attrs(store: Path) -> dict:
    """The attributes of the mosaic store's root group (empty when there is no store)."""
    try:
        return dict(zarr.open_group(store, mode="r").attrs)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.ContainsArrayError):
        return {}


def set_store_attrs(store: Path, **attrs: object) -> None:
    """Create the mosaic store if needed (in the mosaic's Zarr format) and set attributes of its root group.

    Opened without the consolidated index, which this write then drops: scene groups added during the run would
    be missing from it (the index is rebuilt when the run ends, :func:`consolidate_mosaics`).
    """
    group = zarr.open_group(store, mode="a", zarr_format=_ZARR_FORMAT, use_consolidated=False)
    group.attrs.update(attrs)


def _stored(store: Path, scene_id: str) -> dict | None:
    """The attributes of an existing scene group, or None when there is none (or it is incomplete)."""
    try:
        group = zarr.open_group(store, path=scene_id, mode="r")
    except (FileNotFoundError, zarr.errors.ContainsArrayError, zarr.errors.GroupNotFoundError):
        return None
    if VARIABLE not in group:
        return None
    return dict(group.attrs)


def write_core(store: Path, scene_id: str, core: PixelWindow, codes: np.ndarray) -> None:
    """Write one tile core (its own whole chunk) into the scene's mosaic.

    codes: Q x core.height x core.width uint8, from :func:`encode_probability`.
    """
    array = zarr.open_array(store, path=f"{scene_id}/{VARIABLE}", mode="r+", zarr_format=_ZARR_FORMAT)
    # A core is written only when it holds valid pixels (and an all-FILL chunk would read as a missing one), so
    # zarr's pixel-by-pixel check for a chunk it need not store is pure cost: 30-40 ms a tile with 5 queries.
    array = array.with_config({"write_empty_chunks": True})
    Q, H, W = codes.shape
    assert (H, W) == core.shape and Q == array.shape[0], (codes.shape, core, array.shape)
    rows, cols = core.slices()
    array[:, rows, cols] = codes


def open_mosaic(store: Path, scene_id: str) -> xr.Dataset:
    """Open a scene's mosaic lazily, with its CRS and transform decoded (``.rio.crs``, ``.rio.transform()``).

    Reads the group's own metadata (a few small files), not the store's index: that is rebuilt only when a run ends.
    """
    import rioxarray  # noqa: F401

    return xr.open_zarr(store, group=scene_id, decode_coords="all", consolidated=False)

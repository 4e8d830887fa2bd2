"""Cloud-Optimized GeoTIFFs of a scene's probability mosaic: one single-band COG per query.

The Zarr mosaic (``masks.zarr/<scene_id>/probability``) opens in xarray and recent GDAL, but not in the GDAL
that most desktop GIS ship; a COG opens everywhere. Each COG keeps the stored form exactly: uint8 codes with
the Zarr's scale, offset and nodata (so a reader that applies scale/offset gets the same probabilities as
xarray), the CRS and transform of the mosaic's ``spatial_ref``, the query id as band description, and the
query id and text as metadata tags.

Memory stays bounded whatever the scene's size: the Zarr is copied chunk by chunk into a tiled,
uncompressed GeoTIFF beside the target (random-access writes, one band of temporary disk), and GDAL's COG
driver then builds overviews and writes the COG block by block from it, with GDAL's block cache capped at
``cache_mb``. The COG appears under its final name only when complete (temporary name, then rename).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
import rasterio.shutil
import zarr
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from rsrs.core.errors import RsrsError
from rsrs.core.files import atomic_path
from rsrs.pipeline.geometry import PixelWindow
from rsrs.pipeline.mosaic import FINGERPRINT_ATTR, VARIABLE, open_mosaic
from rsrs.pipeline.scenes import safe_id

if TYPE_CHECKING:
    import xarray as xr

#: Creation options of GDAL's COG driver: DEFLATE (readable by every GIS, unlike ZSTD or LERC) with the
#: horizontal predictor (smooth probabilities compress well), 512 px blocks, overviews averaged over valid
#: pixels only (GDAL skips nodata when averaging), BigTIFF only when a classic TIFF could overflow.
COG_OPTIONS = {
    "compress": "DEFLATE",
    "predictor": "YES",
    "blocksize": 512,
    "overviews": "AUTO",
    "overview_resampling": "AVERAGE",
    "bigtiff": "IF_SAFER",
}
#: GDAL block cache (MB) while converting: the most memory GDAL holds for pixels, whatever the scene's size.
CACHE_MB = 128
#: Dataset metadata tag holding the mosaic's fingerprint, to tell whether a COG is current.
FINGERPRINT_TAG = "rsrs_mosaic"


class MosaicNotFoundError(RsrsError, FileNotFoundError):
    """A Zarr store has no mosaic for the scene asked for."""


@dataclass(frozen=True)
class CogSource:
    """What one query's COG is made from: the Zarr array, its query index, grid and stored encoding."""

    store: Path
    scene_id: str
    query_index: int
    query_id: str
    query_text: str
    shape: tuple[int, int]  # (ny, nx)
    chunks: tuple[int, int]  # (cy, cx) of the Zarr chunks
    crs: CRS | None
    transform: Affine
    scale: float
    offset: float
    nodata: int
    fingerprint: str | None

    def windows(self) -> Iterator[PixelWindow]:
        """The Zarr chunks of the scene as pixel windows, row by row (edge chunks clipped to the scene)."""
        (ny, nx), (cy, cx) = self.shape, self.chunks
        for row in range(0, ny, cy):
            for col in range(0, nx, cx):
                yield PixelWindow(row, col, min(cy, ny - row), min(cx, nx - col))

    def tags(self) -> dict[str, str]:
        """Dataset metadata tags of the COG."""
        tags = {"query_id": self.query_id, "query": self.query_text, "scene_id": self.scene_id}
        return tags | ({FINGERPRINT_TAG: self.fingerprint} if self.fingerprint else {})


def cog_sources(store: Path, scene_id: str) -> list[CogSource]:
    """One :class:`CogSource` per query of ``scene_id``'s mosaic, in stored order (reads metadata only)."""
    ds = _open(store, scene_id)
    prob = ds[VARIABLE]
    encoding = prob.encoding
    _, cy, cx = encoding["chunks"]
    common = {
        "store": Path(store),
        "scene_id": scene_id,
        "shape": (prob.sizes["y"], prob.sizes["x"]),
        "chunks": (cy, cx),
        "crs": prob.rio.crs,
        "transform": prob.rio.transform(),
        "scale": float(encoding.get("scale_factor", 1.0)),
        "offset": float(encoding.get("add_offset", 0.0)),
        "nodata": int(encoding["_FillValue"]),
        "fingerprint": ds.attrs.get(FINGERPRINT_ATTR),
    }
    ids, texts = ds["query"].values.tolist(), ds["query_text"].values.tolist()
    return [
        CogSource(query_index=q, query_id=str(qid), query_text=str(text), **common)
        for q, (qid, text) in enumerate(zip(ids, texts, strict=True))
    ]


def _open(store: Path, scene_id: str) -> xr.Dataset:
    try:
        return open_mosaic(store, scene_id)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as err:
        raise MosaicNotFoundError(
            f"no mosaic for scene '{scene_id}' in {store}; check the scene id (see run.json) and that the run "
            "wrote its masks.zarr"
        ) from err


def cog_file_names(query_ids: Sequence[str]) -> dict[str, str]:
    """``query id -> file name`` (``<id>.tif``), safe in any file system and distinct for distinct ids.

    Ids that :func:`~rsrs.pipeline.scenes.safe_id` maps to one name (``a b`` and ``a_b``) get ``-2``, ``-3``...
    """
    names: dict[str, str] = {}
    taken: set[str] = set()
    for qid in query_ids:
        stem, n = safe_id(qid), 1
        while (name := stem if n == 1 else f"{stem}-{n}").lower() in taken:  # case-insensitive file systems
            n += 1
        taken.add(name.lower())
        names[qid] = f"{name}.tif"
    return names


def is_current(path: Path, source: CogSource) -> bool:
    """True when ``path`` is a COG already written from this mosaic (same fingerprint); never without one."""
    if source.fingerprint is None or not Path(path).exists():
        return False
    with rasterio.open(path) as dataset:
        return dataset.tags().get(FINGERPRINT_TAG) == source.fingerprint


def write_cog(source: CogSource, path: Path, *, cache_mb: int = CACHE_MB) -> Path:
    """Write ``source``'s query as a COG at ``path`` (atomically) and return ``path``.

    Peak memory: one Zarr chunk of one query plus GDAL's block cache (``cache_mb``); temporary disk: one
    uncompressed band beside ``path``, removed afterwards.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.src.tif")
    try:
        with rasterio.Env(GDAL_CACHEMAX=cache_mb):
            _stage(source, staging)
            with atomic_path(path) as tmp:
                rasterio.shutil.copy(
                    staging, tmp, driver="COG", num_threads=str(min(4, os.cpu_count() or 1)), **COG_OPTIONS
                )
    finally:
        staging.unlink(missing_ok=True)
    return path


def _stage(source: CogSource, staging: Path) -> None:
    """Copy the query's codes chunk by chunk into a tiled, uncompressed GeoTIFF with the COG's metadata."""
    ny, nx = source.shape
    profile = {
        "driver": "GTiff",
        "width": nx,
        "height": ny,
        "count": 1,
        "dtype": "uint8",
        "crs": source.crs,
        "transform": source.transform,
        "nodata": source.nodata,
        "tiled": True,
        "blockxsize": COG_OPTIONS["blocksize"],
        "blockysize": COG_OPTIONS["blocksize"],
        "sparse_ok": True,
        "bigtiff": "IF_SAFER",
    }
    array = zarr.open_array(source.store, path=f"{source.scene_id}/{VARIABLE}", mode="r")
    with rasterio.open(staging, "w", **profile) as dst:
        for window in source.windows():
            rows, cols = window.slices()
            codes = np.asarray(array[source.query_index, rows, cols])  # window.height x window.width uint8
            dst.write(codes, 1, window=Window(window.col_off, window.row_off, window.width, window.height))
        dst.scales = (source.scale,)
        dst.offsets = (source.offset,)
        dst.set_band_description(1, source.query_id)
        dst.update_tags(**source.tags())


def write_scene_cogs(
    store: Path,
    scene_id: str,
    folder: Path,
    *,
    only_stale: bool = True,
    cache_mb: int = CACHE_MB,
    on_file: Callable[[str, bool], None] | None = None,
) -> dict[str, Path]:
    """Write one COG per query of ``scene_id`` into ``folder`` (names from :func:`cog_file_names`).

    ``only_stale``: keep COGs already written from this very mosaic (see :func:`is_current`).
    ``on_file(query_id, written)`` is called after each query (for progress). Returns ``query id -> path``
    of every query's COG, written now or kept.
    """
    sources = cog_sources(store, scene_id)
    names = cog_file_names([s.query_id for s in sources])
    paths = {}
    for source in sources:
        path = paths[source.query_id] = Path(folder) / names[source.query_id]
        stale = not (only_stale and is_current(path, source))
        if stale:
            write_cog(source, path, cache_mb=cache_mb)
        if on_file is not None:
            on_file(source.query_id, stale)
    return paths

"""Scenes: what to read for one georeferenced image, resolved once and small enough to ship to workers.

A :class:`Scene` names its pixel grid, the three (R, G, B) band sources as GDAL paths, and the stretch to
uint8, so a worker needs nothing else to read any window of it. Scenes come from raster paths, globs and
URLs here, and from STAC items in :mod:`rsrs.pipeline.stac`.
"""

from __future__ import annotations

import glob
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from rsrs.core.errors import InputDataError, RsrsError
from rsrs.pipeline.geometry import RasterGrid
from rsrs.pipeline.network import http_options
from rsrs.pipeline.scaling import DEFAULT_SCALING, ScalingSpec, resolve_scaling

#: GDAL settings for every open: no directory listing per remote file, and threads to decode the blocks of a read
#: (GeoTIFF, GDAL >= 3.6) without the GIL. Those threads are one pool per process, as large as the largest
#: GDAL_NUM_THREADS any read asked for, shared by every reading thread of a worker: so it is sized to the machine
#: (with 4, a 16-core GPU worker read about 150 tiles/s however many tasks read: about what 4 threads decode), unless
#: the environment sets ``GDAL_NUM_THREADS`` (GDAL's own variable). HTTP retries and timeouts come from
#: :mod:`rsrs.pipeline.network`.
GDAL_ENV = {
    "GDAL_NUM_THREADS": os.environ.get("GDAL_NUM_THREADS") or str(os.cpu_count() or 1),
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
}

_VSI_PREFIXES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/"}


class SceneNotFoundError(RsrsError, FileNotFoundError):
    """A raster path or URL names nothing that exists."""


class SceneReadError(InputDataError):
    """A raster exists but cannot be used: unreadable, no CRS or georeferencing, a band it does not have."""


class RemoteReadError(SceneReadError, ConnectionError):
    """A remote raster's server or the network kept failing (HTTP 429/5xx, resets, timeouts) through every retry."""


_SERVER_FAILURE = re.compile(r"HTTP response code: (429|5\d\d)|CURL error")


@dataclass(frozen=True)
class BandSource:
    """One band to read: a GDAL path (``/vsicurl/...`` for URLs) and a 1-based band index."""

    href: str
    band: int


@dataclass(frozen=True)
class Scene:
    """One image to segment, as a small picklable value.

    ``grid`` is the pixel grid outputs are written on (the finest of the sources); ``bands`` the R, G, B
    sources (a single-band image repeats its band); ``scaling`` one ``(lo, hi)`` per band mapping raw
    values to 0..255; ``nodata`` says how invalid pixels are marked (for reports); ``source`` is where the
    scene came from (a path, URL or STAC item), for messages. A scene from a STAC item also keeps the item's
    ``datetime`` (an ISO 8601 instant, or ``start/end`` for an item with only a range) and ``item_href`` (its
    self href), so the run's own catalog can date its outputs and link back to it.
    """

    id: str
    grid: RasterGrid
    bands: tuple[BandSource, BandSource, BandSource]
    dtype: str
    scaling: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
    nodata: str
    source: str
    datetime: str | None = None
    item_href: str | None = None


def gdal_path(href: str) -> str:
    """The path GDAL opens for ``href``: URLs become ``/vsicurl/``, ``s3://`` ``/vsis3/``; paths pass."""
    parsed = urlparse(href)
    if parsed.scheme == "file":
        return parsed.path
    prefix = _VSI_PREFIXES.get(parsed.scheme)
    if prefix is None:
        return href
    return prefix + (href if prefix == "/vsicurl/" else parsed.netloc + parsed.path)


def _is_local(path: str) -> bool:
    return not path.startswith("/vsi") and urlparse(path).scheme in ("", "file")


def read_from_local_files(scene: Scene) -> bool:
    """Whether every band of ``scene`` is a local file: reading it then waits on decoding (the CPU), not a network."""
    return all(_is_local(band.href) for band in scene.bands)


def safe_id(text: str) -> str:
    """``text`` reduced to characters safe in a Zarr group and a file name (letters, digits, ``._-``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    return cleaned or "scene"


def scene_id_from_href(href: str) -> str:
    """A scene id from a path or URL: the file name without its extension."""
    return safe_id(PurePosixPath(urlparse(href).path or href).stem)


def deduplicate_ids(scenes: Sequence[Scene]) -> list[Scene]:
    """``scenes`` with repeated ids made unique by a ``-2``, ``-3``... suffix, in order."""
    seen: set[str] = {s.id for s in scenes}
    counts: dict[str, int] = {}
    out = []
    for scene in scenes:
        n = counts[scene.id] = counts.get(scene.id, 0) + 1
        if n == 1:
            out.append(scene)
            continue
        while f"{scene.id}-{n}" in seen:
            n += 1
        seen.add(f"{scene.id}-{n}")
        out.append(replace(scene, id=f"{scene.id}-{n}"))
    return out


@contextmanager
def open_raster(href: str) -> Iterator[rasterio.DatasetReader]:
    """Open a GDAL path or URL for reading, turning GDAL failures into one-line rsrs errors."""
    path = gdal_path(href)
    if _is_local(path) and not Path(path).exists():
        raise SceneNotFoundError(
            f"raster not found: {href}; check the path (relative paths in a job resolve against the job file's folder)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # reported as an error by _grid_of
            with rasterio.Env(**GDAL_ENV, **http_options().gdal_env()), rasterio.open(path) as dataset:
                yield dataset
    except RasterioIOError as err:
        reason = str(err).splitlines()[0]
        if "404" in reason or "No such file" in reason:
            raise SceneNotFoundError(f"raster not found: {href} ({reason}); check the path or URL") from err
        if _SERVER_FAILURE.search(reason):
            raise RemoteReadError(
                f"cannot read {href}: {reason} (after {http_options().retries} retries); rerun later (finished scenes "
                "are kept) or raise network.retries / network.timeout_s"
            ) from err
        raise SceneReadError(
            f"cannot read {href} as a raster ({reason}); check that it is a complete GeoTIFF/COG that GDAL can open"
        ) from err


def default_bands(dataset: rasterio.DatasetReader) -> tuple[int, int, int]:
    """R, G, B band indexes of a raster: by colour interpretation, else 1-2-3, a single band repeated."""
    interp = list(dataset.colorinterp)
    if all(c in interp for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
        return tuple(interp.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue))
    data_bands = [i + 1 for i, c in enumerate(interp) if c != ColorInterp.alpha]
    if len(data_bands) >= 3:
        return (data_bands[0], data_bands[1], data_bands[2])
    if len(data_bands) == 1:
        return (data_bands[0],) * 3
    raise SceneReadError(
        f"{dataset.name} has {dataset.count} bands and no RGB colour interpretation; "
        "say which to use as R, G, B with `bands: [r, g, b]`"
    )


def _grid_of(dataset: rasterio.DatasetReader, href: str) -> RasterGrid:
    if dataset.crs is None:
        raise SceneReadError(
            f"{href} has no CRS; assign one (e.g. `gdal_edit.py -a_srs EPSG:XXXX {href}`) or remove it from the inputs"
        )
    if dataset.transform == Affine.identity():
        raise SceneReadError(
            f"{href} has no geotransform (GCPs or none); warp it to a georeferenced grid first (e.g. gdalwarp)"
        )
    return RasterGrid(shape=dataset.shape, transform=dataset.transform, crs=dataset.crs.to_string())


def _nodata_kind(dataset: rasterio.DatasetReader, band: int) -> str:
    flags = dataset.mask_flag_enums[band - 1]
    if MaskFlags.alpha in flags:
        return "alpha band"
    if MaskFlags.per_dataset in flags:
        return "internal mask"
    if MaskFlags.nodata in flags:
        return f"nodata={dataset.nodata:g}"
    return "none"


def scene_from_sources(scene_id: str, sources: Sequence[BandSource], *, scaling: ScalingSpec, source: str) -> Scene:
    """A scene from 1 or 3 band sources (one source is repeated as R, G and B).

    Opens each distinct file once to check it, takes the finest grid among them and resolves the scaling.
    """
    if len(sources) not in (1, 3):
        raise SceneReadError(f"{source}: give 1 or 3 bands (R, G, B), got {len(sources)}")
    sources = tuple(sources) * (3 if len(sources) == 1 else 1)
    datasets: dict[str, rasterio.DatasetReader] = {}
    with ExitStack() as stack:
        for src in sources:
            if src.href not in datasets:
                datasets[src.href] = stack.enter_context(open_raster(src.href))
            dataset = datasets[src.href]
            if not 1 <= src.band <= dataset.count:
                raise SceneReadError(
                    f"{source}: band {src.band} requested but {src.href} has {dataset.count} "
                    f"band(s) (1..{dataset.count}); fix `bands`"
                )
        grids = [_grid_of(ds, href) for href, ds in datasets.items()]
        grid = min(grids, key=lambda g: g.pixel_area)
        dtype = str(np.result_type(*(datasets[s.href].dtypes[s.band - 1] for s in sources)))
        pairs = resolve_scaling([(datasets[s.href], s.band) for s in sources], dtype=dtype, spec=scaling)
        kinds = dict.fromkeys(_nodata_kind(datasets[s.href], s.band) for s in sources)
    return Scene(
        id=safe_id(scene_id),
        grid=grid,
        bands=sources,
        dtype=dtype,
        scaling=pairs,
        nodata=", ".join(kinds),
        source=source,
    )


def scene_from_raster(
    href: str,
    *,
    bands: Sequence[int] | None = None,
    scaling: ScalingSpec = DEFAULT_SCALING,
    scene_id: str | None = None,
) -> Scene:
    """A scene from one raster path or URL; ``bands`` are 1-based R, G, B indexes (or one, repeated)."""
    if bands is None:
        with open_raster(href) as dataset:
            bands = default_bands(dataset)
    path = gdal_path(href)
    return scene_from_sources(
        scene_id or scene_id_from_href(href),
        [BandSource(path, int(b)) for b in bands],
        scaling=scaling,
        source=href,
    )


def expand_paths(pattern: str) -> list[str]:
    """Paths matching a glob (sorted), or the pattern itself when it is a URL or has no wildcard."""
    if not _is_local(gdal_path(pattern)) or not glob.has_magic(pattern):
        return [pattern]
    matches = sorted(glob.glob(pattern, recursive=True))
    if not matches:
        raise SceneNotFoundError(
            f"no files match {pattern}; check the pattern (relative paths in a job "
            "resolve against the job file's folder)"
        )
    return matches


def scenes_from_paths(
    pattern_or_url: str, *, bands: Sequence[int] | None = None, scaling: ScalingSpec = DEFAULT_SCALING
) -> list[Scene]:
    """Scenes for every raster a path, glob or URL names, with unique ids."""
    return deduplicate_ids([scene_from_raster(p, bands=bands, scaling=scaling) for p in expand_paths(pattern_or_url)])

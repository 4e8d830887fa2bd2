"""Turning a job's ``inputs`` into scenes, recording or raising on the ones that cannot be used.

With ``on_error: skip`` every bad file, item or search becomes an :class:`InputFailure` and the rest still
resolve; with ``on_error: fail`` the first one (in input order) raises its one-line error. Scenes are opened on
a few threads: for remote rasters each open waits on several HTTP round trips.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm import tqdm

from rsrs.core.errors import RsrsError
from rsrs.pipeline.network import HttpOptions, use_http_options
from rsrs.pipeline.scenes import Scene, deduplicate_ids, expand_paths, scene_from_raster
from rsrs.pipeline.stac import load_items, scene_from_item
from rsrs.workflows.job import InputSpec, Job

log = logging.getLogger(__name__)

#: Scenes opened at once while resolving inputs (GDAL waits on the network without the GIL for part of an open).
RESOLVE_THREADS = 8
#: From this many scenes on, opening them shows a progress bar.
PROGRESS_FROM = 20


@dataclass(frozen=True)
class InputFailure:
    """An input (a path, URL, STAC item or search) that yielded no scene, and why, in one line."""

    source: str
    message: str


@dataclass
class ResolvedInputs:
    """The scenes of a job (unique ids, in input order) and the inputs that failed."""

    scenes: list[Scene] = field(default_factory=list)
    failures: list[InputFailure] = field(default_factory=list)


def _attempts(spec: InputSpec, http: HttpOptions) -> Iterator[tuple[str, Callable[[], Scene]]]:
    """``(source, make_scene)`` per scene an input names; listing the input itself may raise."""
    scaling = spec.scaling.spec()
    if spec.geotiff is not None:
        for href in expand_paths(spec.geotiff):
            yield href, lambda href=href: scene_from_raster(href, bands=spec.bands, scaling=scaling)
        return
    stac = spec.stac
    assert stac is not None
    items = load_items(
        http=http,
        catalog=stac.catalog,
        api=stac.api,
        collections=stac.collections,
        bbox=stac.bbox,
        datetime=stac.datetime,
        query=stac.query,
        filter=stac.filter,
        max_items=stac.max_items,
    )
    for item in items:
        yield (
            item.get_self_href() or f"STAC item {item.id}",
            lambda item=item: scene_from_item(
                item, asset=stac.asset, assets=stac.assets, bands=stac.bands, scaling=scaling
            ),
        )


def resolve_scenes(job: Job, *, threads: int = RESOLVE_THREADS, progress: bool = False) -> ResolvedInputs:
    """Every scene of ``job``'s inputs, ``threads`` opened at once; failures are recorded (``skip``) or raised.

    ``progress``: a bar over the scenes being opened (on stderr), when there are many. The job's ``network``
    options become this process's GDAL HTTP settings (:func:`rsrs.pipeline.network.use_http_options`).
    """
    http = job.network.options()
    use_http_options(http)
    resolved = ResolvedInputs()

    def failed(source: str, err: RsrsError) -> None:
        if job.on_error == "fail":
            raise err
        log.info("skipping %s: %s", source, err)  # recorded in run.json; the CLI lists failures at the end
        resolved.failures.append(InputFailure(source=source, message=str(err)))

    entries: list[tuple[str, Callable[[], Scene] | RsrsError]] = []  # (source, how to open it or why not)
    for spec in job.inputs:
        try:
            entries += list(_attempts(spec, http))
        except RsrsError as err:
            entries.append((spec.label, err))
            if job.on_error == "fail":
                break  # no later input can fail first
    pool = ThreadPoolExecutor(threads, "rsrs-resolve")
    try:
        opened = pool.map(_scene_or_error, [entry for _, entry in entries])
        with tqdm(opened, total=len(entries), desc="opening scenes", unit="scene", dynamic_ncols=True,
                  disable=not progress or len(entries) < PROGRESS_FROM, leave=False) as bar:  # fmt: skip
            outcomes = list(bar)
    finally:  # on Ctrl-C or SIGTERM the scenes not yet opening are dropped, not opened first
        pool.shutdown(wait=False, cancel_futures=True)
    for (source, _), outcome in zip(entries, outcomes, strict=True):
        if isinstance(outcome, RsrsError):
            failed(source, outcome)
        else:
            resolved.scenes.append(outcome)
    resolved.scenes = deduplicate_ids(resolved.scenes)
    return resolved


def _scene_or_error(entry: Callable[[], Scene] | RsrsError) -> Scene | RsrsError:
    """The scene an entry opens, or the rsrs error that says why it cannot be used (others propagate)."""
    if isinstance(entry, RsrsError):  # its input could not even be listed
        return entry
    try:
        return entry()
    except RsrsError as err:
        return err

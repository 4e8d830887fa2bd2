"""Turning a job's ``inputs`` into scenes, recording or raising on the ones that cannot be used.

With ``on_error: skip`` every bad file, item or search becomes an :class:`InputFailure` and the rest still
resolve; with ``on_error: fail`` the first one raises its one-line error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rsrs.model.errors import RsrsError
from rsrs.pipeline.scenes import Scene, deduplicate_ids, expand_paths, scene_from_raster
from rsrs.pipeline.stac import load_items, scene_from_item
from rsrs.workflows.job import InputSpec, Job

log = logging.getLogger(__name__)


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


def _attempts(spec: InputSpec) -> Iterator[tuple[str, Callable[[], Scene]]]:
    """``(source, make_scene)`` per scene an input names; listing the input itself may raise."""
    scaling = spec.scaling.spec()
    if spec.geotiff is not None:
        for href in expand_paths(spec.geotiff):
            yield href, lambda href=href: scene_from_raster(href, bands=spec.bands, scaling=scaling)
        return
    stac = spec.stac
    assert stac is not None
    items = load_items(
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


def resolve_scenes(job: Job) -> ResolvedInputs:
    """Every scene of ``job``'s inputs; failures are recorded (``skip``) or raised (``fail``)."""
    resolved = ResolvedInputs()

    def failed(source: str, err: RsrsError) -> None:
        if job.on_error == "fail":
            raise err
        log.warning("skipping %s: %s", source, err)
        resolved.failures.append(InputFailure(source=source, message=str(err)))

    for spec in job.inputs:
        try:
            attempts = list(_attempts(spec))
        except RsrsError as err:
            failed(spec.label, err)
            continue
        for source, make_scene in attempts:
            try:
                resolved.scenes.append(make_scene())
            except RsrsError as err:
                failed(source, err)
    resolved.scenes = deduplicate_ids(resolved.scenes)
    return resolved

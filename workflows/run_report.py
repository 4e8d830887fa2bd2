"""The record of a run (``run.json``): per-scene status, tile counts, timings and errors, and the totals.

Scene records are filled as results come back; :func:`run_report` turns them into the JSON document the CLI
summarises and readers open (written atomically, see :mod:`rsrs.workflows.run_outputs`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from pyproj import CRS

from rsrs.pipeline.scenes import Scene
from rsrs.pipeline.tiling import TileGrid


class SceneStatus(StrEnum):
    """Where a scene stands: planned (dry run), pending (tiles to compute), done, or failed."""

    PLANNED = "planned"
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclass
class SceneReport:
    """One scene's entry in run.json: where it came from, its grid, tile counts, timings and errors."""

    id: str | None
    source: str
    status: SceneStatus = SceneStatus.PENDING
    shape: tuple[int, int] | None = None
    crs: str | None = None
    resolution: tuple[float, float] | None = None
    tiles_total: int = 0
    tiles_computed: int = 0  # run by the model in this run
    tiles_resumed: int = 0  # finished by an earlier run
    tiles_without_data: int = 0  # all-nodata tiles (no model run)
    polygons: int = 0
    read_s: float = 0.0
    model_s: float = 0.0
    write_s: float = 0.0
    wall_s: float = 0.0
    error: str | None = None
    partial_mosaic: bool = False  # failed after some of its tiles were written: masks.zarr holds only those
    truth_iou: dict[str, float] = field(default_factory=dict)  # query id -> IoU against the query's `truth`
    _started: float | None = field(default=None, repr=False)

    @classmethod
    def planned(cls, scene: Scene, tiles: TileGrid) -> SceneReport:
        """A scene about to run."""
        return cls(
            id=scene.id,
            source=scene.source,
            status=SceneStatus.PLANNED,
            shape=scene.grid.shape,
            crs=short_crs(scene.grid.crs),
            resolution=scene.grid.resolution,
            tiles_total=len(tiles),
        )

    @classmethod
    def unresolved(cls, source: str, error: str) -> SceneReport:
        """An input that yielded no scene."""
        return cls(id=None, source=source, status=SceneStatus.FAILED, error=error)

    @property
    def tiles_done(self) -> int:
        """Tiles finished so far, by this run or earlier ones."""
        return self.tiles_computed + self.tiles_resumed + self.tiles_without_data

    def to_json(self) -> dict:
        """The run.json form (no private fields)."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")} | {"status": self.status.value}

    def started(self) -> None:
        """Note when the scene's first task was submitted."""
        if self._started is None:
            self._started = time.perf_counter()

    def finished(self) -> None:
        """Note the scene's last result."""
        if self._started is not None:
            self.wall_s = time.perf_counter() - self._started

    def failed(self, message: str) -> None:
        """Mark the scene failed with a one-line reason (its mosaic is partial if tiles were written)."""
        self.status, self.error = SceneStatus.FAILED, message
        self.partial_mosaic = self.tiles_computed + self.tiles_resumed > 0
        self.finished()


def short_crs(crs: str | None) -> str | None:
    """``EPSG:32614`` for a CRS with an authority code, else the CRS's name (WKT is too long to print)."""
    if crs is None:
        return None
    parsed = CRS.from_user_input(crs)
    authority = parsed.to_authority()
    return ":".join(authority) if authority else parsed.name


def run_report(
    *,
    job: dict,
    job_file: str | None,
    identity: dict,
    model: dict,
    reports: Sequence[SceneReport],
    outputs: dict[str, str],
    started: float,
    dry_run: bool,
    workers: dict | None = None,
) -> dict:
    """The run report (run.json): resolved job, what decides its outputs, model identity, scenes, totals, and the
    cluster's ``workers`` (tasks per worker, workers lost; see :mod:`rsrs.workflows.run_workers`)."""
    return {
        "job": job,
        "job_file": job_file,
        "identity": identity,
        "model": model,
        "dry_run": dry_run,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 3),
        "outputs": outputs,
        "workers": workers,
        "scenes": [r.to_json() for r in reports],
        "totals": {
            "scenes": len(reports),
            "scenes_done": sum(r.status is SceneStatus.DONE for r in reports),
            "scenes_failed": sum(r.status is SceneStatus.FAILED for r in reports),
            "tiles": sum(r.tiles_total for r in reports),
            "tiles_computed": sum(r.tiles_computed for r in reports),
            "tiles_resumed": sum(r.tiles_resumed for r in reports),
            "tiles_without_data": sum(r.tiles_without_data for r in reports),
            "polygons": sum(r.polygons for r in reports),
        },
    }

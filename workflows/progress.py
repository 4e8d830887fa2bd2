"""What ``rsrs run`` tells the user: per-scene bookkeeping, the progress bar, the dry-run table, the summary."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import click
from pyproj import CRS
from tqdm import tqdm

from rsrs.pipeline.scenes import Scene
from rsrs.pipeline.tiling import TileGrid


@dataclass
class SceneReport:
    """One scene's entry in run.json: where it came from, its grid, tile counts, timings and errors."""

    id: str | None
    source: str
    status: str = "pending"  # pending | done | failed | planned
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
    truth_iou: dict[str, float] = field(default_factory=dict)  # query id -> IoU against the query's `truth`
    _started: float | None = field(default=None, repr=False)

    @classmethod
    def planned(cls, scene: Scene, tiles: TileGrid) -> SceneReport:
        """A scene about to run."""
        return cls(
            id=scene.id,
            source=scene.source,
            status="planned",
            shape=scene.grid.shape,
            crs=short_crs(scene.grid.crs),
            resolution=scene.grid.resolution,
            tiles_total=len(tiles),
        )

    def to_json(self) -> dict:
        """The run.json form (no private fields)."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def started(self) -> None:
        """Note when the scene's first task was submitted."""
        if self._started is None:
            self._started = time.perf_counter()

    def finished(self) -> None:
        """Note the scene's last result."""
        if self._started is not None:
            self.wall_s = time.perf_counter() - self._started


def short_crs(crs: str | None) -> str | None:
    """``EPSG:32614`` for a CRS with an authority code, else the CRS's name (WKT is too long to print)."""
    if crs is None:
        return None
    parsed = CRS.from_user_input(crs)
    authority = parsed.to_authority()
    return ":".join(authority) if authority else parsed.name


def print_plan(reports: Sequence[SceneReport]) -> None:
    """The dry-run table: each scene's size, CRS, resolution and tile count, then the total."""
    width = max([len(r.id or "") for r in reports] + [5])
    click.echo(f"{'scene':<{width}}  {'size (ny x nx)':>15}  {'crs':<12}  {'resolution':>14}  {'tiles':>7}")
    for r in reports:
        assert r.shape is not None and r.resolution is not None
        size = f"{r.shape[0]} x {r.shape[1]}"
        res = f"{r.resolution[1]:.4g} x {r.resolution[0]:.4g}"
        click.echo(f"{r.id:<{width}}  {size:>15}  {r.crs or '-':<12}  {res:>14}  {r.tiles_total:>7}")
    total = sum(r.tiles_total for r in reports)
    click.echo(f"total: {len(reports)} scene(s), {total} tile(s)")


class TileProgress:
    """A tqdm bar over all tiles of the run (resumed ones count as done), with scenes done / total."""

    def __init__(self, reports: Sequence[SceneReport], *, enabled: bool) -> None:
        self.reports = reports
        self.bar = tqdm(
            total=sum(r.tiles_total for r in reports),
            initial=sum(r.tiles_resumed for r in reports),
            unit="tile",
            desc="rsrs run",
            disable=not enabled,
            dynamic_ncols=True,
        )
        self.refresh()

    def advance(self, tiles: int) -> None:
        """Count finished tiles and refresh the scene counter."""
        self.bar.update(tiles)
        self.refresh()

    def refresh(self) -> None:
        """Show scenes done/total beside the rate tqdm shows (tiles/s)."""
        done = sum(r.status in ("done", "failed") for r in self.reports)
        self.bar.set_postfix_str(f"scenes {done}/{len(self.reports)}")

    def close(self) -> None:
        """Finish the bar."""
        self.bar.close()


def summary_line(reports: Sequence[SceneReport], *, seconds: float, polygons: int) -> str:
    """One line for the end of a run."""
    done = sum(r.status == "done" for r in reports)
    failed = sum(r.status == "failed" for r in reports)
    computed = sum(r.tiles_computed for r in reports)
    resumed = sum(r.tiles_resumed for r in reports)
    empty = sum(r.tiles_without_data for r in reports)
    failed_text = f", {failed} failed" if failed else ""
    return (
        f"{done} scene(s) done{failed_text}; tiles: {computed} computed, {resumed} resumed, "
        f"{empty} without data; {polygons} polygon(s); {seconds:.1f} s"
    )


def truth_lines(report: SceneReport, texts: Mapping[str, str], *, with_scene: bool) -> list[str]:
    """One line per scored query: ``IoU vs truth  ponds: 0.83  "the dark ponds"`` (scene id first if asked)."""
    prefix = f"{report.id}/" if with_scene else ""
    return [f'IoU vs truth  {prefix}{qid}: {iou:.2f}  "{texts[qid]}"' for qid, iou in report.truth_iou.items()]

"""What ``rsrs run`` shows: the tile progress bar while it works, and the lines the CLI prints from a run's report
(the dry-run table, the summary, failures, IoUs against truths)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tqdm import tqdm

from rsrs.workflows.run_report import SceneReport, SceneStatus


class TileProgress:
    """A tqdm bar (stderr) over all tiles of the run (resumed ones count as done), with scenes done / total."""

    def __init__(self, reports: Sequence[SceneReport], *, enabled: bool) -> None:
        self.reports = reports
        self.bar = tqdm(
            total=sum(r.tiles_total for r in reports),
            initial=sum(r.tiles_done for r in reports),
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
        done = sum(r.status in (SceneStatus.DONE, SceneStatus.FAILED) for r in self.reports)
        self.bar.set_postfix_str(f"scenes {done}/{len(self.reports)}")

    def close(self) -> None:
        """Finish the bar."""
        self.bar.close()


def plan_lines(report: Mapping) -> list[str]:
    """The dry-run table of a run report: each scene's size, CRS, resolution and tile count, then the total."""
    scenes = [s for s in report["scenes"] if s["id"] is not None]
    width = max([len(s["id"]) for s in scenes] + [5])
    lines = [f"{'scene':<{width}}  {'size (ny x nx)':>15}  {'crs':<12}  {'resolution':>14}  {'tiles':>7}"]
    for s in scenes:
        size = f"{s['shape'][0]} x {s['shape'][1]}"
        res = f"{s['resolution'][1]:.4g} x {s['resolution'][0]:.4g}"
        lines.append(f"{s['id']:<{width}}  {size:>15}  {s['crs'] or '-':<12}  {res:>14}  {s['tiles_total']:>7}")
    lines.append(f"total: {len(scenes)} scene(s), {sum(s['tiles_total'] for s in scenes)} tile(s)")
    return lines


def failure_lines(report: Mapping) -> list[str]:
    """One line per scene or input that failed."""
    lines = []
    for s in report["scenes"]:
        if s["status"] != SceneStatus.FAILED:
            continue
        what = f"scene {s['id']}" if s["id"] else f"input {s['source']}"
        partial = f" (masks.zarr/{s['id']} is partial: tiles written before the failure)" if s["partial_mosaic"] else ""
        lines.append(f"skipped {what}: {s['error']}{partial}")
    return lines


def summary_line(report: Mapping) -> str:
    """One line for the end of a run."""
    t = report["totals"]
    failed = f", {t['scenes_failed']} failed" if t["scenes_failed"] else ""
    return (
        f"{t['scenes_done']} scene(s) done{failed}; tiles: {t['tiles_computed']} computed, {t['tiles_resumed']} "
        f"resumed, {t['tiles_without_data']} without data; {t['polygons']} polygon(s); {report['seconds']:.1f} s"
    )


def truth_lines(report: Mapping, texts: Mapping[str, str]) -> list[str]:
    """One line per scored query: ``IoU vs truth  ponds: 0.83  "the dark ponds"`` (scene id first if several)."""
    scored = [s for s in report["scenes"] if s.get("truth_iou")]
    prefix = len([s for s in report["scenes"] if s["id"]]) > 1
    return [
        f'IoU vs truth  {s["id"] + "/" if prefix else ""}{qid}: {iou:.2f}  "{texts[qid]}"'
        for s in scored
        for qid, iou in s["truth_iou"].items()
    ]

"""How a run proceeds: check the run folder -> resolve scenes -> plan -> compute -> merge polygons -> report.

The client plans tiles, creates each scene's Zarr group and submits batches of tiles (bounded in flight);
workers write chunks and per-tile polygon sidecars (``<dir>/tiles/<scene_id>/<tile>.parquet``) and send back
polygons and timings as values. Once all of a scene's tasks are back, its polygons are merged across core
borders; at the end ``polygons.parquet`` and ``run.json`` are written atomically. A tile with a sidecar is
finished, so rerunning a job resumes where it stopped; ``--overwrite`` deletes the outputs first.

Nothing in the run folder changes until a scene is known to run: a job whose inputs all fail leaves earlier
outputs as they were.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from rsrs.core.errors import RsrsError
from rsrs.core.files import write_text_atomic
from rsrs.model.registry import check_query_lengths, resolve_model_spec
from rsrs.pipeline.mosaic import VARIABLE, create_mosaic, open_mosaic
from rsrs.pipeline.polygons import TilePolygons, empty_frame, load_tile, merge_tiles, polygon_frame, write_geoparquet
from rsrs.pipeline.resident import ModelRef
from rsrs.pipeline.scenes import Scene
from rsrs.pipeline.tasks import BatchResult, tile_path
from rsrs.workflows.inputs import resolve_scenes
from rsrs.workflows.job import Job
from rsrs.workflows.overlay import write_overlay
from rsrs.workflows.progress import TileProgress
from rsrs.workflows.run_compute import compute_tiles
from rsrs.workflows.run_outputs import (
    MASKS,
    OVERLAYS,
    POLYGONS,
    REPORT,
    TILES,
    RunError,
    check_output_dir,
    claim_output_dir,
    job_identity,
    refuse_other_job,
)
from rsrs.workflows.run_plan import ScenePlan, plan_run
from rsrs.workflows.run_report import SceneReport, SceneStatus, run_report
from rsrs.workflows.truth import check_truths, score_truths

log = logging.getLogger(__name__)


class _Run:
    """One run's fixed facts (job, folder, model) and how it reports; the steps are its methods."""

    def __init__(self, job: Job, *, progress: bool, notify: Callable[[str], None]) -> None:
        self.job = job
        self.out = Path(job.output.dir).resolve()
        self.identity = job_identity(job)
        self.model = ModelRef(source=job.model.checkpoint or job.model.name, device=job.model.device)
        self.progress, self.notify = progress, notify
        self.started = time.time()
        self.devices: set[str] = set()

    def report(self, reports: list[SceneReport], *, dry_run: bool) -> dict:
        """The run.json document for these scene records."""
        job = self.job
        outputs = {"masks": MASKS, "polygons": POLYGONS, "tiles": TILES} | (
            {"overlays": OVERLAYS} if job.output.overlay else {}
        )
        used = ",".join(sorted(self.devices)) or None
        return run_report(
            job=job.model_dump(mode="json"),
            job_file=job.source,
            identity=self.identity,
            model=asdict(self.model) | {"device": used or self.model.device, "device_requested": self.model.device},
            reports=reports,
            outputs=outputs,
            started=self.started,
            dry_run=dry_run,
        )

    def write_report(self, reports: list[SceneReport]) -> dict:
        report = self.report(reports, dry_run=False)
        write_text_atomic(self.out / REPORT, json.dumps(report, indent=2))
        return report


def execute(job: Job, *, scheduler: str | None, overwrite: bool, dry_run: bool, progress: bool,
            notify: Callable[[str], None]) -> dict:  # fmt: skip
    """Run ``job`` (see :func:`rsrs.workflows.run.run_job`) and return its report."""
    run = _Run(job, progress=progress, notify=notify)
    check_output_dir(run.out)
    if not overwrite:
        refuse_other_job(run.out, run.identity)
    config, _ = resolve_model_spec(run.model.source)  # a bad preset or missing file fails here, not on workers
    check_query_lengths(config, [q.text for q in job.queries])
    resolved = resolve_scenes(job, progress=progress)
    failures = [SceneReport.unresolved(f.source, f.message) for f in resolved.failures]
    if not resolved.scenes:
        first = failures[0].error if failures else "the inputs name no scene"
        raise RunError(f"no scene could be opened ({first}); nothing was written")
    check_truths(job.queries, resolved.scenes)
    if dry_run:
        plans = plan_run(job, resolved.scenes, lambda _: set())
        for plan in plans:
            plan.report.status = SceneStatus.PLANNED
        return run.report([p.report for p in plans] + failures, dry_run=True)
    claim_output_dir(run.out, run.identity, overwrite=overwrite)
    plans = plan_run(job, resolved.scenes, lambda sid: {p.stem for p in (run.out / TILES / sid).glob("*.parquet")})
    for plan in plans:
        _create_mosaic(run, plan)
    frames = _compute(run, plans, failures, scheduler=scheduler)
    reports = [p.report for p in plans] + failures
    done = [p for p in plans if p.report.status is SceneStatus.DONE]
    for plan in done:
        if plan.id not in frames:  # finished by earlier runs
            frames[plan.id] = _scene_frame(job, plan, {}, run.out)
        plan.report.polygons = len(frames[plan.id])
    if not done:
        run.write_report(reports)
        raise RunError(f"no scene could be computed ({reports[0].error}); see {run.out / REPORT}")
    ordered = [frames[p.id] for p in done]
    write_geoparquet(pd.concat(ordered, ignore_index=True) if ordered else empty_frame(job.output.vector_crs),
                     run.out / POLYGONS)  # fmt: skip
    _score_and_draw(job, done, frames, run.out)
    return run.write_report(reports)


def _create_mosaic(run: _Run, plan: ScenePlan) -> None:
    """The scene's Zarr group, created (or a compatible one kept)."""
    job = run.job
    create_mosaic(
        run.out / MASKS,
        plan.id,
        plan.scene.grid,
        query_ids=[q.id for q in job.queries],
        query_texts=[q.text for q in job.queries],
        chunk_size=plan.tiles.core_size,
        fingerprint=_fingerprint(run, plan.scene),
        source=plan.scene.source,
    )


def _fingerprint(run: _Run, scene: Scene) -> str:
    """A hash of everything that decides a scene's chunk contents and tile polygons."""
    decisive = {"job": run.identity | {"inputs": None}, "scene": asdict(scene)}
    return hashlib.sha256(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _compute(run: _Run, plans: list[ScenePlan], failures: list[SceneReport], *, scheduler: str | None) -> dict:
    """Run the plans' pending tiles; fold each task's outcome into its scene; merge each finished scene's polygons.

    Returns the merged polygon frames of the scenes finished in this run, by scene id.
    """
    job = run.job
    frames: dict[str, pd.DataFrame] = {}
    if not any(p.tasks for p in plans):
        return frames
    tiles: dict[str, dict[str, TilePolygons]] = {p.id: {} for p in plans}
    tasks_left = {p.id: len(p.tasks) for p in plans}
    bar = TileProgress([p.report for p in plans], enabled=run.progress)
    try:
        for plan, outcome, n_tiles in compute_tiles(job, plans, run.model, run.out, scheduler=scheduler,
                                                     notify=run.notify):  # fmt: skip
            report = plan.report
            tasks_left[plan.id] -= 1
            if report.status is not SceneStatus.FAILED:
                _fold(run, report, outcome, tiles[plan.id])
            if report.status is SceneStatus.FAILED:
                tiles.pop(plan.id, None)
                if job.on_error == "fail":
                    run.write_report([p.report for p in plans] + failures)
                    raise RunError(f"scene {plan.id} failed: {report.error}{_partial_note(report)}")
            elif tasks_left[plan.id] == 0:
                report.finished()
                report.status = SceneStatus.DONE
                frames[plan.id] = _scene_frame(job, plan, tiles.pop(plan.id), run.out)
            bar.advance(n_tiles)
    finally:
        bar.close()
    return frames


def _fold(run: _Run, report: SceneReport, outcome: BatchResult | BaseException, tiles: dict[str, TilePolygons]) -> None:
    """Add a task's outcome to its scene: its tiles and timings, or the failure that ends the scene."""
    if isinstance(outcome, BaseException):
        report.failed(_one_line(outcome))
        log.info("scene %s failed: %s", report.id, report.error)
        return
    run.devices.add(outcome.device)
    for tile in outcome.polygons:
        tiles[tile.key] = tile
    report.tiles_computed += outcome.computed
    report.tiles_without_data += outcome.skipped
    report.read_s += outcome.read_s
    report.model_s += outcome.model_s
    report.write_s += outcome.write_s
    if outcome.failure is not None:
        report.failed(f"{report.source}: cannot read {outcome.failure}")
        log.info("scene %s failed: %s", report.id, report.error)


def _one_line(error: BaseException) -> str:
    """An error as one line: rsrs errors say it all; others get their type name."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return message if isinstance(error, RsrsError) else f"{type(error).__name__}: {message}"


def _partial_note(report: SceneReport) -> str:
    return (
        f"; masks.zarr/{report.id} is partial ({report.tiles_done} of {report.tiles_total} tiles written)"
        if report.partial_mosaic
        else ""
    )


def _scene_frame(job: Job, plan: ScenePlan, fresh: dict[str, TilePolygons], out: Path) -> pd.DataFrame:
    """A finished scene's merged polygons, from this run's tiles (``fresh``) and earlier runs' sidecars."""
    parts = [fresh[t.key] if t.key in fresh else load_tile(tile_path(out / TILES / plan.id, t)) for t in plan.tiles]
    return polygon_frame(
        merge_tiles(parts),
        scene_id=plan.id,
        grid=plan.scene.grid,
        query_ids=[q.id for q in job.queries],
        query_texts=[q.text for q in job.queries],
        min_area_m2=job.output.min_area_m2,
        vector_crs=job.output.vector_crs,
    )


def _score_and_draw(job: Job, plans: list[ScenePlan], frames: dict[str, pd.DataFrame], out: Path) -> None:
    """For each finished scene: IoUs against the queries' truths (into its report) and the overlay PNG."""
    if not (job.output.overlay or any(q.truth for q in job.queries)):
        return
    model_name = Path(job.model.checkpoint or job.model.name).name
    for plan in plans:
        probability = open_mosaic(out / MASKS, plan.id)[VARIABLE]
        scores = score_truths(probability, job.queries, threshold=job.output.threshold)
        plan.report.truth_iou = {qid: round(s.iou, 4) for qid, s in scores.items()}
        if job.output.overlay:
            write_overlay(
                out / OVERLAYS / f"{plan.id}.png",
                scene=plan.scene,
                probability=probability,
                polygons=frames[plan.id],
                queries=job.queries,
                threshold=job.output.threshold,
                ious=plan.report.truth_iou,
                title=f"{plan.id}  ·  model {model_name}  ·  fill: p > {job.output.threshold}, outline: polygons",
            )

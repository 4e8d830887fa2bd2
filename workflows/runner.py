"""How a run proceeds once :mod:`rsrs.workflows.run_start` has checked its folder, model and scenes: plan -> compute
-> polygons per scene -> report.

The client plans tiles, creates each scene's Zarr group and submits batches of tiles (bounded in flight);
workers write chunks and per-tile polygon sidecars (``<dir>/tiles/<scene_id>/<tile>.parquet``) and send back
timings and counts as values. When a scene's last task is back, its polygons are streamed from the sidecars,
merged across core borders, into its own file of ``polygons.parquet/`` (:mod:`rsrs.workflows.run_polygons`); at
the end ``run.json`` is written. Every file appears under its name in one rename. A tile with a sidecar is finished,
so rerunning a job resumes where it stopped; ``--overwrite`` deletes the outputs first.

Nothing in the run folder changes until a scene is known to run: a job whose inputs all fail leaves earlier
outputs as they were. From then on the run holds the folder's lock (:mod:`rsrs.workflows.run_lock`): a second run
into it stops with one line. A write that fails (a full disk) stops the run with one line naming the path, on the
client or on a worker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import geopandas as gpd
from distributed import KilledWorker

from rsrs.core.errors import OutputError, RsrsError
from rsrs.core.files import output_error, write_text_atomic
from rsrs.pipeline.mosaic import VARIABLE, consolidate_mosaics, create_mosaic, open_mosaic
from rsrs.pipeline.resident import ModelRef
from rsrs.pipeline.scenes import Scene
from rsrs.pipeline.tasks import BatchResult
from rsrs.pipeline.tiling import Tile
from rsrs.workflows.export import write_run_cogs
from rsrs.workflows.job import Job
from rsrs.workflows.overlay import write_overlay
from rsrs.workflows.progress import TileProgress
from rsrs.workflows.run_catalog import SceneOutputs, write_run_catalog
from rsrs.workflows.run_compute import compute_tiles
from rsrs.workflows.run_lock import hold_run_folder
from rsrs.workflows.run_outputs import (
    CATALOG,
    COGS,
    MASKS,
    OVERLAYS,
    POLYGONS,
    REPORT,
    TILES,
    RunError,
    claim_output_dir,
    job_identity,
    refuse_other_job,
)
from rsrs.workflows.run_plan import ScenePlan, plan_run
from rsrs.workflows.run_polygons import existing_part, part_path, prune_parts, write_part
from rsrs.workflows.run_report import SceneReport, SceneStatus, run_report
from rsrs.workflows.run_start import OpenedRun
from rsrs.workflows.run_workers import WorkerLog, killed_message
from rsrs.workflows.truth import score_truths

log = logging.getLogger(__name__)


class _Run:
    """One run's fixed facts (job, folder, model) and how it reports; the steps are its methods."""

    def __init__(self, job: Job, *, progress: bool, notify: Callable[[str], None]) -> None:
        self.job = job
        self.out = Path(job.output.dir).resolve()
        self.identity = job_identity(job)
        spec = job.model
        self.model = ModelRef(spec.source, spec.device, compile=spec.compile, precision=spec.precision)
        self.progress, self.notify = progress, notify
        self.started = time.time()
        self.devices: set[str] = set()
        self.workers = WorkerLog()

    @property
    def keeps_cogs(self) -> bool:
        """COGs are written (or kept current): the job asks for them, or the folder has them (``rsrs export --cog``)."""
        return self.job.output.cog or (self.out / COGS).is_dir()

    def report(self, reports: list[SceneReport], *, dry_run: bool) -> dict:
        """The run.json document for these scene records."""
        job = self.job
        outputs = (
            {"masks": MASKS, "polygons": POLYGONS, "tiles": TILES, "catalog": CATALOG}
            | ({"overlays": OVERLAYS} if job.output.overlay else {})
            | ({"cogs": COGS} if self.keeps_cogs else {})
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
            workers=None if dry_run else self.workers.to_json(),
        )

    def write_report(self, reports: list[SceneReport]) -> dict:
        report = self.report(reports, dry_run=False)
        write_text_atomic(self.out / REPORT, json.dumps(report, indent=2))
        return report


def execute(job: Job, opened: OpenedRun, *, scheduler: str | None, overwrite: bool, dry_run: bool, progress: bool,
            notify: Callable[[str], None]) -> dict:  # fmt: skip
    """Run ``job`` over the scenes :func:`~rsrs.workflows.run_start.open_run` opened (see
    :func:`rsrs.workflows.run.run_job`) and return its report."""
    run = _Run(job, progress=progress, notify=notify)
    if dry_run:
        plans = plan_run(job, opened.scenes, lambda _: set())
        for plan in plans:
            plan.report.status = SceneStatus.PLANNED
        return run.report([p.report for p in plans] + opened.failures, dry_run=True)
    with hold_run_folder(run.out):
        if not overwrite:  # again: another run may have written here while this one opened its scenes
            refuse_other_job(run.out, run.identity)
        claim_output_dir(run.out, run.identity, overwrite=overwrite)
        return _run_claimed(run, opened.scenes, opened.failures, scheduler=scheduler)


def _run_claimed(run: _Run, scenes: Sequence[Scene], failures: list[SceneReport], *, scheduler: str | None) -> dict:
    """The run once it holds its folder: plan, compute, write each finished scene's polygons, report."""
    job = run.job
    plans = plan_run(job, scenes, lambda sid: {p.stem for p in (run.out / TILES / sid).glob("*.parquet")})
    for plan in plans:  # finished scenes: their group checked now; the others' made as their first task goes out
        if not plan.tasks:
            _create_mosaic(run, plan)
    finished = _compute(run, plans, failures, scheduler=scheduler)
    consolidate_mosaics(run.out / MASKS)
    reports = [p.report for p in plans] + failures
    done = [p for p in plans if p.report.status is SceneStatus.DONE]
    for plan in done:  # scenes finished by earlier runs: their polygon file, kept or rewritten
        if plan.id not in finished:
            kept = existing_part(job, run.out, plan.id)
            plan.report.polygons = kept if kept is not None else write_part(job, plan, run.out)
    if not done:
        run.write_report(reports)
        raise RunError(f"no scene could be computed ({reports[0].error}); see {run.out / REPORT}")
    prune_parts(run.out, {p.id for p in done})
    _score_and_draw(job, done, run.out)
    _write_catalog(run, done, reports)
    return run.write_report(reports)


def _write_catalog(run: _Run, done: list[ScenePlan], reports: list[SceneReport]) -> None:
    """The run's STAC catalog of its finished scenes, with their COGs written (or kept current) first."""
    job, out = run.job, run.out
    cogs = {}
    if run.keeps_cogs:
        done_ids = [p.id for p in done]
        cogs = write_run_cogs(out / MASKS, done_ids, out / COGS, queries=len(job.queries), progress=run.progress).paths
    outputs = {
        plan.id: SceneOutputs(
            cogs={qid: path.relative_to(out).as_posix() for qid, path in cogs.get(plan.id, {}).items()},
            polygons=part_path(out, plan.id).relative_to(out).as_posix(),
            overlay=f"{OVERLAYS}/{plan.id}.png" if job.output.overlay else None,
        )
        for plan in done
    }
    started = datetime.fromtimestamp(run.started, tz=UTC)
    try:
        write_run_catalog(out, job=job, scenes=[p.scene for p in done], reports=reports, outputs=outputs,
                          started=started)  # fmt: skip
    except OSError as err:
        if isinstance(err, OutputError):
            raise
        raise output_error(out / CATALOG, err) from None


def _create_mosaic(run: _Run, plan: ScenePlan) -> None:
    """The scene's Zarr group, created (or a compatible one kept)."""
    job = run.job
    try:
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
    except OSError as err:
        if isinstance(err, OutputError):
            raise
        raise output_error(run.out / MASKS / plan.id, err) from None


def _fingerprint(run: _Run, scene: Scene) -> str:
    """A hash of everything that decides a scene's chunk contents and tile polygons."""
    decisive = {"job": run.identity | {"inputs": None}, "scene": asdict(scene)}
    return hashlib.sha256(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _compute(run: _Run, plans: list[ScenePlan], failures: list[SceneReport], *, scheduler: str | None) -> set[str]:
    """Run the plans' pending tiles; fold each task's outcome into its scene; write each scene's polygons as its
    last task comes back. Returns the ids of the scenes finished in this run.
    """
    job = run.job
    finished: set[str] = set()
    if not any(p.tasks for p in plans):
        return finished
    tiles_left = {p.id: sum(map(len, p.tasks)) for p in plans}
    bar = TileProgress([p.report for p in plans], enabled=run.progress)
    try:
        for plan, outcome, tiles in compute_tiles(job, plans, run.model, run.out, scheduler=scheduler,
                                                  notify=run.notify, workers=run.workers,
                                                  prepare=lambda plan: _create_mosaic(run, plan)):  # fmt: skip
            report = plan.report
            tiles_left[plan.id] -= len(tiles)
            if report.status is not SceneStatus.FAILED:
                _fold(run, report, outcome, tiles)
            if report.status is SceneStatus.FAILED:
                if job.on_error == "fail":
                    run.write_report([p.report for p in plans] + failures)
                    raise RunError(f"scene {plan.id} failed: {report.error}{_partial_note(report)}")
            elif tiles_left[plan.id] == 0:
                report.finished()
                report.status = SceneStatus.DONE
                report.polygons = write_part(job, plan, run.out)
                finished.add(plan.id)
            bar.advance(len(tiles))
    finally:
        bar.close()
    return finished


def _fold(run: _Run, report: SceneReport, outcome: BatchResult | BaseException, tiles: Sequence[Tile]) -> None:
    """Add a task's outcome to its scene: its tile counts and timings, or the failure that ends the scene.

    A write that failed (:class:`OutputError`: a full or read-only disk) stops the run: every scene would fail so.
    """
    if isinstance(outcome, OutputError):
        raise outcome
    if isinstance(outcome, KilledWorker):  # a task of one tile (see run_compute)
        report.failed(killed_message(outcome, tiles[0]))
        log.info("scene %s failed: %s", report.id, report.error)
        return
    if isinstance(outcome, BaseException):
        report.failed(_one_line(outcome))
        log.info("scene %s failed: %s", report.id, report.error)
        return
    run.devices.add(outcome.device)
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


def _score_and_draw(job: Job, plans: list[ScenePlan], out: Path) -> None:
    """For each finished scene: IoUs against the queries' truths (into its report) and the overlay PNG."""
    if not (job.output.overlay or any(q.truth for q in job.queries)):
        return
    model_name = Path(job.model.source).name
    for plan in plans:
        probability = open_mosaic(out / MASKS, plan.id)[VARIABLE]
        scores = score_truths(probability, job.queries, threshold=job.output.threshold)
        plan.report.truth_iou = {qid: round(s.iou, 4) for qid, s in scores.items()}
        if job.output.overlay:
            write_overlay(
                out / OVERLAYS / f"{plan.id}.png",
                scene=plan.scene,
                probability=probability,
                polygons=gpd.read_parquet(part_path(out, plan.id)),
                queries=job.queries,
                threshold=job.output.threshold,
                ious=plan.report.truth_iou,
                title=f"{plan.id}  ·  model {model_name}  ·  fill: p > {job.output.threshold}, outline: polygons",
            )

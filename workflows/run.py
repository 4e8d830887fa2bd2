"""``rsrs run JOB.yaml``: scenes -> tiles -> Dask workers -> Zarr mosaics + GeoParquet polygons + run.json.

The client plans tiles, creates each scene's Zarr group and submits batches of tiles (bounded in flight);
workers write chunks and per-tile polygon sidecars (``<dir>/tiles/<scene_id>/<tile>.parquet``) and send
back polygons and timings. At the end the client merges each scene's polygons across core borders and
writes ``polygons.parquet`` and ``run.json`` atomically. A tile with a sidecar is finished, so rerunning
a job resumes where it stopped; ``--overwrite`` deletes the outputs first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import click
import pandas as pd

from rsrs.core.errors import RsrsError
from rsrs.core.files import write_text_atomic
from rsrs.model.registry import resolve_model_spec
from rsrs.pipeline.infer import BatchResult, BatchTask, ModelRef, run_batch, tile_path
from rsrs.pipeline.mosaic import VARIABLE, create_mosaic, open_mosaic
from rsrs.pipeline.polygons import (
    TilePolygons,
    empty_frame,
    load_tile,
    merge_tiles,
    polygon_frame,
    write_geoparquet,
)
from rsrs.pipeline.scenes import Scene
from rsrs.pipeline.tiling import TileGrid, batched, plan_tiles
from rsrs.workflows.cluster import GPU_PER_TASK, bounded_map, dask_client, load_models, uses_gpus
from rsrs.workflows.inputs import resolve_scenes
from rsrs.workflows.job import Job, load_job
from rsrs.workflows.overlay import write_overlay
from rsrs.workflows.progress import SceneReport, TileProgress, print_plan, summary_line, truth_lines
from rsrs.workflows.truth import check_truths, score_truths

log = logging.getLogger(__name__)

#: Model batches per Dask task: enough for the reader/writer threads to overlap I/O with the model.
BATCHES_PER_TASK = 4
#: Outputs of a run inside ``output.dir`` (all that ``--overwrite`` deletes; nothing else is touched).
MASKS, TILES, POLYGONS, REPORT, OVERLAYS = "masks.zarr", "tiles", "polygons.parquet", "run.json", "overlays"


class RunError(RsrsError, RuntimeError):
    """A run could not produce any output, or a scene failed under ``on_error: fail``."""


def run_job(
    job_or_path: Job | str | Path,
    *,
    scheduler: str | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: bool = True,
) -> dict:
    """Run a job (a validated :class:`Job` or a YAML path) and return its report, as written to run.json."""
    started = time.time()
    job = job_or_path if isinstance(job_or_path, Job) else load_job(job_or_path)
    resolved = resolve_scenes(job, progress=progress)
    scenes = resolved.scenes
    grids = {s.id: plan_tiles(s.grid, tile_size=job.tiling.tile_size, overlap=job.tiling.overlap) for s in scenes}
    reports = [SceneReport.planned(s, grids[s.id]) for s in scenes]
    failures = [SceneReport(id=None, source=f.source, status="failed", error=f.message) for f in resolved.failures]
    model = ModelRef(source=job.model.checkpoint or job.model.name, device=job.model.device)
    resolve_model_spec(model.source)  # a bad preset or missing file fails here, not on every worker
    check_truths(job.queries, scenes)
    out = Path(job.output.dir).resolve()
    if dry_run:
        if reports:
            print_plan(reports)
        for f in failures:
            click.echo(f"cannot use {f.source}: {f.error}", err=True)
        if not reports:
            raise RunError(f"no scene could be resolved ({failures[0].error if failures else 'no inputs'})")
        return _report(job, model, reports + failures, started=started, dry_run=True)
    if overwrite:
        _clear_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    pending = {s.id: _prepare_scene(job, model, s, grids[s.id], out, r) for s, r in zip(scenes, reports, strict=True)}
    results: dict[str, dict[str, TilePolygons]] = {s.id: {} for s in scenes}
    frames: dict[str, pd.DataFrame] = {}
    by_id = {s.id: s for s in scenes}

    def finish(scene_id: str) -> None:  # merge a scene's polygons once it is done, then drop its tiles
        frames[scene_id] = _scene_frame(job, by_id[scene_id], grids[scene_id], results.pop(scene_id), out)

    if any(pending.values()):
        _compute(
            job, model, scenes, pending, results, reports, out, scheduler=scheduler, progress=progress, on_done=finish
        )
    for r in reports:
        if r.status != "failed":
            r.status = "done"
            if r.id not in frames:  # finished by earlier runs
                finish(r.id)
            r.polygons = len(frames[r.id])
    ordered = [frames[s.id] for s in scenes if s.id in frames]
    frame = pd.concat(ordered, ignore_index=True) if ordered else empty_frame(job.output.vector_crs)
    write_geoparquet(frame, out / POLYGONS)
    _score_and_draw(job, [by_id[r.id] for r in reports if r.status == "done"], reports, frames, out)
    report = _report(job, model, reports + failures, started=started, dry_run=False)
    write_text_atomic(out / REPORT, json.dumps(report, indent=2))
    if progress and any(r.status == "done" for r in reports):
        click.echo(summary_line(reports + failures, seconds=time.time() - started, polygons=len(frame)), err=True)
        texts = {q.id: q.text for q in job.queries}
        for r in reports:
            for line in truth_lines(r, texts, with_scene=len(reports) > 1):
                click.echo(line)
    if not any(r.status == "done" for r in reports):
        first = (failures + reports)[0].error if failures or reports else None
        raise RunError(f"nothing could run ({first or 'the job resolved to no scenes'}); see {out / REPORT}")
    return report


def _clear_outputs(out: Path) -> None:
    """Delete this run's outputs (and only them) from ``out``."""
    for name in (MASKS, TILES, OVERLAYS):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (POLYGONS, REPORT):
        (out / name).unlink(missing_ok=True)


def _score_and_draw(
    job: Job, scenes: list[Scene], reports: list[SceneReport], frames: dict[str, pd.DataFrame], out: Path
) -> None:
    """For each finished scene: IoUs against the queries' truths (into its report) and the overlay PNG."""
    if not (job.output.overlay or any(q.truth for q in job.queries)):
        return
    by_id = {r.id: r for r in reports}
    model_name = Path(job.model.checkpoint or job.model.name).name
    for scene in scenes:
        probability = open_mosaic(out / MASKS, scene.id)[VARIABLE]
        scores = score_truths(probability, job.queries, threshold=job.output.threshold)
        by_id[scene.id].truth_iou = {qid: round(s.iou, 4) for qid, s in scores.items()}
        if job.output.overlay:
            write_overlay(
                out / OVERLAYS / f"{scene.id}.png",
                scene=scene,
                probability=probability,
                polygons=frames[scene.id],
                queries=job.queries,
                threshold=job.output.threshold,
                ious=by_id[scene.id].truth_iou,
                title=f"{scene.id}  ·  model {model_name}  ·  fill: p > {job.output.threshold}, outline: polygons",
            )


def _fingerprint(job: Job, model: ModelRef, scene: Scene) -> str:
    """A hash of everything that decides a scene's chunk contents and tile polygons."""
    decisive = {
        "model": asdict(model),
        "queries": [(q.id, q.text) for q in job.queries],
        "tiling": [job.tiling.tile_size, job.tiling.overlap],
        "threshold": job.output.threshold,
        "scene": asdict(scene),
    }
    return hashlib.sha256(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _prepare_scene(job: Job, model: ModelRef, scene: Scene, tiles: TileGrid, out: Path, report: SceneReport) -> list:
    """Create the scene's Zarr group (or keep a compatible one) and return the tiles still to compute."""
    create_mosaic(
        out / MASKS,
        scene.id,
        scene.grid,
        query_ids=[q.id for q in job.queries],
        query_texts=[q.text for q in job.queries],
        chunk_size=tiles.core_size,
        fingerprint=_fingerprint(job, model, scene),
    )
    tiles_dir = out / TILES / scene.id
    todo = [t for t in tiles if not tile_path(tiles_dir, t).exists()]
    report.tiles_resumed = len(tiles) - len(todo)
    report.status = "pending" if todo else "done"
    return todo


def _compute(
    job: Job,
    model: ModelRef,
    scenes: list[Scene],
    pending: dict[str, list],
    results: dict[str, dict[str, TilePolygons]],
    reports: list[SceneReport],
    out: Path,
    *,
    scheduler: str | None,
    progress: bool,
    on_done: Callable[[str], None],
) -> None:
    """Run the pending tiles on the cluster, filling ``results`` and the reports; ``on_done(id)`` per scene."""
    by_id = {r.id: r for r in reports}
    texts = tuple(q.text for q in job.queries)
    per_task = job.tiling.batch_size * BATCHES_PER_TASK
    tasks_left = {sid: len(batched(tiles, per_task)) if tiles else 0 for sid, tiles in pending.items()}

    def tasks() -> Iterator[BatchTask]:
        for scene in scenes:
            for group in batched(pending[scene.id], per_task) if pending[scene.id] else []:
                if by_id[scene.id].status == "failed":
                    break  # a failed scene submits nothing more
                by_id[scene.id].started()
                yield BatchTask(
                    scene=scene,
                    tiles=group,
                    query_texts=texts,
                    model=model,
                    store=str(out / MASKS),
                    tiles_dir=str(out / TILES / scene.id),
                    threshold=job.output.threshold,
                    batch_size=job.tiling.batch_size,
                )

    with dask_client(job.compute, scheduler=scheduler) as client:
        if progress:
            click.echo(f"Dask dashboard: {client.dashboard_link}", err=True)
        local = not (scheduler or job.compute.scheduler)
        load_models(client, model, texts, local=local, warm_up=(job.tiling.batch_size, job.tiling.tile_size))
        resources = {"GPU": GPU_PER_TASK} if uses_gpus(client) else None
        n_workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
        running = round(1 / GPU_PER_TASK) if resources else 1  # tasks a worker runs at once
        bar = TileProgress(reports, enabled=progress)
        try:
            for task, outcome in bounded_map(
                client, run_batch, tasks(), max_in_flight=(running + 1) * n_workers, resources=resources
            ):
                report = by_id[task.scene.id]
                tasks_left[report.id] -= 1
                if isinstance(outcome, BaseException):
                    _scene_failed(job, report, outcome)
                elif report.status != "failed":
                    _record(outcome, report, results[report.id])
                if report.status == "failed":
                    report.finished()
                elif tasks_left[report.id] == 0:
                    report.finished()
                    report.status = "done"
                    on_done(report.id)
                bar.advance(len(task.tiles))
        finally:
            bar.close()


def _record(result: BatchResult, report: SceneReport, polygons: dict[str, TilePolygons]) -> None:
    """Add a finished task's polygons and timings to its scene."""
    for tile in result.polygons:
        polygons[tile.key] = tile
    report.tiles_computed += result.computed
    report.tiles_without_data += result.skipped
    report.read_s += result.read_s
    report.model_s += result.model_s
    report.write_s += result.write_s


def _scene_failed(job: Job, report: SceneReport, error: BaseException) -> None:
    """Record a failed task: the scene fails (``skip``) or the run stops (``fail``)."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    if not isinstance(error, RsrsError):
        message = f"{type(error).__name__}: {message}"
    if job.on_error == "fail":
        raise RunError(f"scene {report.id} failed: {message}") from error
    log.warning("scene %s failed: %s", report.id, message)
    report.status, report.error = "failed", message


def _scene_frame(job: Job, scene: Scene, tiles: TileGrid, fresh: dict[str, TilePolygons], out: Path) -> pd.DataFrame:
    """A finished scene's merged polygons, from this run's tiles (``fresh``) and earlier runs' sidecars."""
    parts = [fresh[t.key] if t.key in fresh else load_tile(tile_path(out / TILES / scene.id, t)) for t in tiles]
    return polygon_frame(
        merge_tiles(parts),
        scene_id=scene.id,
        grid=scene.grid,
        query_ids=[q.id for q in job.queries],
        query_texts=[q.text for q in job.queries],
        min_area_m2=job.output.min_area_m2,
        vector_crs=job.output.vector_crs,
    )


def _report(job: Job, model: ModelRef, reports: list[SceneReport], *, started: float, dry_run: bool) -> dict:
    """The run report (run.json): resolved job, model identity, per-scene status, totals."""
    return {
        "job": job.model_dump(mode="json"),
        "job_file": job.source,
        "model": asdict(model),
        "dry_run": dry_run,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 3),
        "outputs": {"masks": MASKS, "polygons": POLYGONS} | ({"overlays": OVERLAYS} if job.output.overlay else {}),
        "scenes": [r.to_json() for r in reports],
        "totals": {
            "scenes": len(reports),
            "scenes_done": sum(r.status == "done" for r in reports),
            "scenes_failed": sum(r.status == "failed" for r in reports),
            "tiles": sum(r.tiles_total for r in reports),
            "tiles_computed": sum(r.tiles_computed for r in reports),
            "tiles_resumed": sum(r.tiles_resumed for r in reports),
            "tiles_without_data": sum(r.tiles_without_data for r in reports),
            "polygons": sum(r.polygons for r in reports),
        },
    }


@click.command("run")
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--scheduler", metavar="ADDRESS", help="Use the Dask cluster at ADDRESS (e.g. tcp://host:8786).")
@click.option("--overwrite", is_flag=True, help="Delete this job's previous outputs and start afresh.")
@click.option("--dry-run", is_flag=True, help="Validate the job, list scenes and tile counts; run no model.")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write outputs here instead of the job's output.dir (e.g. for a job inside an installed package).",
)
def run_command(job_file: Path, scheduler: str | None, overwrite: bool, dry_run: bool, output_dir: Path | None) -> None:
    """Segment the job's queries in every scene: Zarr probability mosaics, GeoParquet polygons, run.json.

    Rerunning a job resumes it: finished tiles are not recomputed.
    """
    job = load_job(job_file)
    if output_dir is not None:
        job = job.model_copy(update={"output": job.output.model_copy(update={"dir": str(output_dir.resolve())})})
    run_job(job, scheduler=scheduler, overwrite=overwrite, dry_run=dry_run)

"""``rsrs run JOB.yaml`` and its Python API :func:`run_job`: segment a job's queries in every scene.

This module stays light (no torch, Dask or GDAL at import), so ``rsrs run --help`` and job errors answer at
once; a run's inputs are checked in :mod:`rsrs.workflows.run_start`, before the run itself
(:mod:`rsrs.workflows.runner`) imports the model and Dask.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import click

from rsrs.workflows.job import Job, load_job

log = logging.getLogger(__name__)


def run_job(
    job_or_path: Job | str | Path,
    *,
    scheduler: str | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: bool = False,
    notify: Callable[[str], None] = log.info,
) -> dict:
    """Run a job (a validated :class:`Job` or a YAML path) and return its report, as written to run.json.

    Prints nothing: ``progress`` shows progress bars on stderr, ``notify`` receives one-line notes (the Dask
    dashboard's address). Raises :class:`~rsrs.workflows.run_outputs.RunError` when nothing could run.
    """
    from rsrs.workflows.run_start import open_run

    job = job_or_path if isinstance(job_or_path, Job) else load_job(job_or_path)
    opened = open_run(job, overwrite=overwrite, progress=progress)  # bad inputs answer before the heavy imports
    from rsrs.workflows.runner import execute

    return execute(
        job, opened, scheduler=scheduler, overwrite=overwrite, dry_run=dry_run, progress=progress, notify=notify
    )


@click.command("run")
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--scheduler", metavar="ADDRESS", help="Use the Dask cluster at ADDRESS (e.g. tcp://host:8786).")
@click.option("--overwrite", is_flag=True, help="Delete the output folder's previous run outputs and start afresh.")
@click.option("--dry-run", is_flag=True, help="Validate the job, list scenes and tile counts; run no model.")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write outputs here instead of the job's output.dir (e.g. for a job inside an installed package).",
)
def run_command(job_file: Path, scheduler: str | None, overwrite: bool, dry_run: bool, output_dir: Path | None) -> None:
    """Segment the job's queries in every scene: Zarr probability mosaics, GeoParquet polygons, run.json.

    \b
    Outputs (in output.dir):
      masks.zarr/<scene>/probability   (query, y, x) probabilities, source CRS
      polygons.parquet/<scene>.parquet GeoParquet: scene_id, query_id, query, score, area_m2, geometry
                                       (read the folder as one table: geopandas.read_parquet)
      catalog.json, items/<scene>.json a STAC Collection of the run, one Item per scene (pystac, QGIS)
      run.json                         the job, the model, per-scene tiles, timings and errors
      tiles/<scene>/*.parquet          per-tile polygons: the resume markers
      overlays/<scene>.png             with output.overlay: true
      cogs/<scene>/<query>.tif         with output.cog: true: Cloud-Optimized GeoTIFFs (QGIS, GDAL)

    Rerunning the same job resumes it (finished tiles are not recomputed); a folder holding another job's
    outputs is refused unless --overwrite, and a folder a live run holds is refused. Ctrl-C or SIGTERM stops the
    run; rerun to resume.
    """
    job = load_job(job_file)
    if output_dir is not None:
        job = job.model_copy(update={"output": job.output.model_copy(update={"dir": str(output_dir.resolve())})})
    report = run_job(
        job,
        scheduler=scheduler,
        overwrite=overwrite,
        dry_run=dry_run,
        progress=True,
        notify=lambda line: click.echo(line, err=True),
    )
    from rsrs.workflows.progress import failure_lines, plan_lines, summary_line, truth_lines

    for line in plan_lines(report) if dry_run else []:
        click.echo(line)
    for line in failure_lines(report):
        click.echo(line, err=True)
    if not dry_run:
        click.echo(summary_line(report), err=True)
        for line in truth_lines(report, {q.id: q.text for q in job.queries}):
            click.echo(line)

"""The run directory of ``rsrs run``: what a run leaves there, which job wrote it, and checking it is usable.

A run directory belongs to one job: its identity (inputs, queries, model, tiling, threshold: everything that
decides the outputs) is stored in ``masks.zarr``'s root attributes when the run starts and in ``run.json``
when it ends. Rerunning the same job resumes; a different job is refused unless ``--overwrite`` (so one folder
never holds a mosaic of one job beside polygons of another). Nothing is touched before the run knows it has a
scene to compute.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rsrs.core.errors import OutputError, RsrsError
from rsrs.core.files import output_error
from rsrs.workflows.job import Job

MASKS, TILES, POLYGONS, REPORT, OVERLAYS = "masks.zarr", "tiles", "polygons.parquet", "run.json", "overlays"
COGS = "cogs"  # Cloud-Optimized GeoTIFFs, cogs/<scene_id>/<query_id>.tif (output.cog, rsrs export --cog)
CATALOG, ITEMS = "catalog.json", "items"  # the run's STAC Collection and its items/<scene_id>.json
_IDENTITY_ATTR = "rsrs_job"


class RunError(RsrsError, RuntimeError):
    """A run could not produce any output, its folder holds another job's, or a scene failed under ``fail``."""


def job_identity(job: Job) -> dict:
    """What decides a run's outputs, in JSON form: two jobs with equal identities write the same files."""
    return {
        "inputs": [spec.model_dump(mode="json", exclude_defaults=True) for spec in job.inputs],
        "queries": [[q.id, q.text] for q in job.queries],
        # fp8 changes the masks, so it is part of the identity (only when set: earlier runs' identities stay equal)
        "model": job.model.model_dump(mode="json", include={"preset", "config", "checkpoint"})
        | ({"precision": job.model.precision} if job.model.precision != "auto" else {}),
        "tiling": [job.tiling.tile_size, job.tiling.overlap],
        "threshold": job.output.threshold,
    }


def check_output_dir(out: Path) -> None:
    """Fail with one line when ``out`` cannot be a run folder: a file, under a file, or not writable."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output folder {out} is a file; set output.dir (or --output-dir) to a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"output folder {out} lies under the file {existing}; set output.dir to a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "is read-only" if _read_only(existing) else "is not writable by this user"
        raise OutputError(f"cannot write into {existing}: it {why}; set output.dir (or --output-dir) elsewhere")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def previous_identity(out: Path) -> dict | None:
    """The identity of the job whose outputs ``out`` holds (from the mosaic store, else run.json), or None."""
    from rsrs.pipeline.mosaic import store_attrs

    stored = store_attrs(out / MASKS).get(_IDENTITY_ATTR)
    if stored is not None:
        return stored
    report = out / REPORT
    if report.is_file():
        try:
            return json.loads(report.read_text()).get("identity")
        except json.JSONDecodeError:
            return None
    return None


def refuse_other_job(out: Path, identity: dict) -> None:
    """Raise when ``out`` holds the outputs of a job with another identity (saying what differs)."""
    previous = previous_identity(out)
    if previous is None or previous == identity:
        return
    differ = [key for key in identity if previous.get(key) != identity[key]] or ["settings"]
    raise RunError(
        f"{out} holds the outputs of another job ({', '.join(differ)} differ); rerun with --overwrite to replace "
        "them, or set another output.dir"
    )


def claim_output_dir(out: Path, identity: dict, *, overwrite: bool) -> None:
    """Make ``out`` this job's run folder: clear a previous run's outputs (``overwrite``), record the identity."""
    from rsrs.pipeline.mosaic import set_store_attrs

    if overwrite:
        clear_outputs(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        set_store_attrs(out / MASKS, **{_IDENTITY_ATTR: identity})
    except OSError as err:
        raise output_error(out / MASKS, err) from None


def clear_outputs(out: Path) -> None:
    """Delete a run's outputs (and only them) from ``out``; ``polygons.parquet`` is a folder (or, from older runs,
    a file)."""
    for name in (MASKS, TILES, OVERLAYS, POLYGONS, COGS, ITEMS):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (POLYGONS, REPORT, CATALOG):
        if (out / name).is_file():
            (out / name).unlink()

"""``rsrs export RUN_DIR --cog``: a finished run's probability mosaics as Cloud-Optimized GeoTIFFs.

Layout: ``RUN_DIR/cogs/<scene_id>/<query_id>.tif``. Scene first, like ``masks.zarr/<scene_id>`` and the
run catalog's items (one item per scene, one COG asset per query): a scene's folder holds everything about
it and can be dropped into a GIS whole, while ``cogs/*/<query_id>.tif`` still lists one query over all
scenes. Query-first folders would not make a ready mosaic anyway: a run's scenes may lie in different CRSs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click
from tqdm import tqdm

from rsrs.core.errors import RsrsError
from rsrs.workflows.run_outputs import COGS, REPORT


class NotARunError(RsrsError, FileNotFoundError):
    """A folder holds no finished ``rsrs run`` (no run.json, or one without outputs)."""


@dataclass(frozen=True)
class RunOutputs:
    """What export needs from a run's run.json: the mosaic store, the finished scenes and the query ids."""

    masks: Path
    scene_ids: list[str]
    query_ids: list[str]


@dataclass
class CogExport:
    """The COGs of a run: ``scene id -> query id -> path``, and how many were written or already current."""

    paths: dict[str, dict[str, Path]] = field(default_factory=dict)
    written: int = 0
    kept: int = 0
    catalog: Path | None = None  # the run's catalog.json, now listing them (None: the run has none)


def read_run(run_dir: Path) -> RunOutputs:
    """The finished scenes of the run in ``run_dir``, from its run.json; one-line errors for anything else."""
    run_dir = Path(run_dir)
    report_path = run_dir / REPORT
    if not report_path.is_file():
        raise NotARunError(
            f"{run_dir} is not an rsrs run folder (no {REPORT}); give the output.dir of a finished `rsrs run`"
        )
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        masks = run_dir / report["outputs"]["masks"]
        scene_ids = [s["id"] for s in report["scenes"] if s["status"] == "done"]
        query_ids = [q["id"] for q in report["job"]["queries"]]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise NotARunError(
            f"{report_path} is not an rsrs run report ({type(err).__name__}: {err}); give the output.dir of a "
            "finished `rsrs run`"
        ) from err
    if report.get("dry_run"):
        raise NotARunError(f"{report_path} is from `rsrs run --dry-run`, which writes no mosaics; run the job first")
    if not scene_ids:
        raise NotARunError(f"no finished scene in {run_dir} ({REPORT} lists none as done); rerun the job first")
    return RunOutputs(masks=masks, scene_ids=scene_ids, query_ids=query_ids)


def export_cogs(run_dir: Path, *, progress: bool = True) -> CogExport:
    """Write the COGs of every finished scene of the run in ``run_dir`` (keeping those already current) and list
    them in the run's catalog."""
    from rsrs.workflows.run_catalog import add_cogs_to_catalog  # pystac and GDAL only once there is work

    run = read_run(run_dir)
    result = write_run_cogs(run.masks, run.scene_ids, Path(run_dir) / COGS, queries=len(run.query_ids),
                            progress=progress)  # fmt: skip
    result.catalog = add_cogs_to_catalog(Path(run_dir), result.paths)
    return result


def write_run_cogs(masks: Path, scene_ids: Sequence[str], folder: Path, *, queries: int, progress: bool) -> CogExport:
    """Write ``folder/<scene_id>/<query_id>.tif`` for each scene of the mosaic store ``masks``, with a progress bar
    of ``len(scene_ids) * queries`` COGs; keep those already current (what ``output.cog`` and export share)."""
    from rsrs.pipeline.cog import write_scene_cogs  # GDAL only once there is work

    result = CogExport()
    bar = tqdm(total=len(scene_ids) * queries, unit="COG", desc="COGs", disable=not progress, dynamic_ncols=True)

    def done(query_id: str, written: bool) -> None:
        result.written += written
        result.kept += not written
        bar.update(1)

    try:
        for scene_id in scene_ids:
            bar.set_postfix_str(scene_id)
            result.paths[scene_id] = write_scene_cogs(masks, scene_id, folder / scene_id, on_file=done)
    finally:
        bar.close()
    return result


@click.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--cog", is_flag=True, help="Write each query's probabilities as a Cloud-Optimized GeoTIFF.")
def export_command(run_dir: Path, cog: bool) -> None:
    """Export a finished run's outputs in formats every GIS opens.

    RUN_DIR is the output.dir of a finished `rsrs run` (the folder with run.json).

    \b
    --cog writes RUN_DIR/cogs/<scene_id>/<query_id>.tif (ids made file-safe),
    one per finished scene and query:
      uint8 codes, probability = code x scale (1/254), nodata 255 (no input data);
      band description = query id, metadata tags query_id and query (the sentence);
      the CRS and transform of the Zarr mosaic, internal overviews, DEFLATE.
    Rerunning rewrites only the COGs whose mosaic changed. The run's catalog.json
    lists them, and later runs of the job into RUN_DIR keep them current.

    \b
    Open them with:
      QGIS       drag a .tif in (or Layer > Add Raster Layer)
      GDAL       gdalinfo -stats RUN_DIR/cogs/<scene_id>/<query_id>.tif
      rasterio   with rasterio.open(path) as src: p = src.read(1, masked=True) * src.scales[0]
    """
    if not cog:
        raise click.UsageError("nothing to export; add --cog (Cloud-Optimized GeoTIFFs of the probabilities)")
    result = export_cogs(run_dir)
    click.echo(f"{result.written} COG(s) written, {result.kept} already current, in {Path(run_dir) / COGS}", err=True)
    if result.catalog is not None:
        click.echo(f"listed in {result.catalog}; reruns of the job keep them current", err=True)
    else:
        click.echo(f"{run_dir} has no catalog.json (a run from an older rsrs): rerun the job to write one", err=True)

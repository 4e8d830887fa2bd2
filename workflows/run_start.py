"""What a run checks before it imports the model, Dask and the GIS writers: its folder, the model the job names, its
scenes and their truths. A job with a missing file or an unknown preset answers in a second or two, with nothing
written; the run itself is :mod:`rsrs.workflows.runner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rsrs.model.spec import check_query_lengths, resolve_model_spec
from rsrs.pipeline.scenes import Scene
from rsrs.workflows.inputs import resolve_scenes
from rsrs.workflows.job import Job
from rsrs.workflows.run_outputs import RunError, check_output_dir, job_identity, refuse_other_job
from rsrs.workflows.run_report import SceneReport
from rsrs.workflows.truth import check_truths


@dataclass(frozen=True)
class OpenedRun:
    """A job that can run: its scenes, and a report for each input that could not be opened."""

    scenes: list[Scene]
    failures: list[SceneReport]


def open_run(job: Job, *, overwrite: bool, progress: bool) -> OpenedRun:
    """Check ``job`` as far as it can be checked without the model; a job that cannot run raises one line."""
    out = Path(job.output.dir).resolve()
    check_output_dir(out)
    if not overwrite:
        refuse_other_job(out, job_identity(job))
    config, _ = resolve_model_spec(job.model.source)  # here, not on the workers
    check_query_lengths(config, [q.text for q in job.queries])
    resolved = resolve_scenes(job, progress=progress)
    failures = [SceneReport.unresolved(f.source, f.message) for f in resolved.failures]
    if not resolved.scenes:
        first = failures[0].error if failures else "the inputs name no scene"
        raise RunError(f"no scene could be opened ({first}); nothing was written")
    check_truths(job.queries, resolved.scenes)
    return OpenedRun(resolved.scenes, failures)

"""A full disk: the run stops with one line naming the path (whether the client or a worker hit it), leaves
nothing half-written under a final name, and a rerun once space is freed resumes and ends equal to a run that
never ran out. The small disk is a real size-limited tmpfs mounted in a private mount namespace (needs root and
`unshare`; skipped where they are missing)."""

import json
import math
import os
import shlex
import shutil
import subprocess

import numpy as np
import pytest
from distributed import LocalCluster

from rsrs.core.errors import OutputError
from rsrs.pipeline.mosaic import create_mosaic
from rsrs.pipeline.resident import ModelRef
from rsrs.pipeline.tasks import BatchTask, TileOutputs, finish_tile
from rsrs.pipeline.tiling import plan_tiles
from rsrs.workflows.inputs import resolve_scenes
from rsrs.workflows.job import load_job
from rsrs.workflows.run import run_job
from tests.workflows.runs import RSRS, assert_same_outputs, final_files, message_lines, temporary_files, write_job

SCENES = {"a": (120, 240), "b": (96, 96)}


def test_a_worker_that_cannot_write_its_chunk_raises_one_output_error_line(tmp_path):
    job = write_job(tmp_path, scenes={"a": (48, 48)})
    (scene,) = resolve_scenes(load_job(job)).scenes
    tile = plan_tiles(scene.grid, tile_size=40, overlap=8).tile(0, 0)
    store = tmp_path / "masks.zarr"
    create_mosaic(store, "a", scene.grid, query_ids=["q"], query_texts=["q"], chunk_size=24, fingerprint="f",
                  source="a.tif")  # fmt: skip
    (store / "a" / "probability" / "0.0.0").mkdir()  # a folder where the tile's chunk file goes
    task = BatchTask(scene=scene, tiles=(tile,), query_texts=("q",), model=ModelRef("tiny", "cpu"), store=str(store),
                     tiles_dir=str(tmp_path / "tiles"), threshold=0.5, batch_size=1)  # fmt: skip
    with pytest.raises(OutputError, match=f"^cannot write {store / 'a'}: Is a directory"):
        finish_tile(TileOutputs.of(task), tile, np.zeros((1, 24, 24), np.uint8))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        job = write_job(tmp_path_factory.mktemp("reference"), scenes=SCENES)
        run_job(job, scheduler=cluster.scheduler_address)
    return job.parent / "out"


def kib_used(out) -> int:
    """What a run folder takes on tmpfs: whole 4 KiB pages per file."""
    return 4 * sum(math.ceil(size / 4096) or 1 for size in final_files(out).values())


def run_on_small_disk(tmp_path, job, *, kib: int) -> dict:
    """In a private mount namespace: run the job into a `kib` KiB tmpfs, keep what it left, grow the disk (space
    freed), rerun, keep what that left. Returns each run's exit code and stderr."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to mount a size-limited tmpfs")
    disk, logs = tmp_path / "disk", tmp_path / "logs"
    disk.mkdir()
    logs.mkdir()
    run = shlex.join([*RSRS, "run", str(job), "--output-dir", str(disk / "out")])
    script = (
        f"mount -t tmpfs -o size={kib}k tmpfs {disk} || exit 99\n"
        f"{run} > /dev/null 2> {logs / 'first.err'}; echo $? > {logs / 'first.code'}\n"
        f"cp -a {disk / 'out'} {tmp_path / 'after_full'}\n"
        f"mount -o remount,size=64m {disk}\n"
        f"{run} > /dev/null 2> {logs / 'second.err'}; echo $? > {logs / 'second.code'}\n"
        f"cp -a {disk / 'out'} {tmp_path / 'after_rerun'}\n"
    )
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=900)
    if done.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return {name: (int((logs / f"{name}.code").read_text()), (logs / f"{name}.err").read_text())
            for name in ("first", "second")}  # fmt: skip


@pytest.mark.slow
def test_a_disk_that_fills_mid_run_is_one_line_and_a_rerun_after_freeing_space_completes(tmp_path, reference):
    job = write_job(tmp_path, scenes=SCENES)
    runs = run_on_small_disk(tmp_path, job, kib=kib_used(reference) // 2)
    code, stderr = runs["first"]
    (line,) = message_lines(stderr)
    assert code == 1 and line.startswith(f"Error: cannot write {tmp_path / 'disk' / 'out'}"), stderr
    assert line.endswith("No space left on device (the disk is full; free space and rerun)"), line
    full = tmp_path / "after_full"
    assert 0 < len(list((full / "tiles").glob("*/*.parquet"))) < 66  # it stopped mid-run
    assert temporary_files(full) == []
    if (full / "run.json").exists():
        json.loads((full / "run.json").read_text())
    code, stderr = runs["second"]
    assert code == 0, stderr
    rerun = tmp_path / "after_rerun"
    assert json.loads((rerun / "run.json").read_text())["totals"]["tiles_resumed"] > 0
    assert_same_outputs(rerun, reference)


@pytest.mark.slow
def test_a_disk_full_from_the_start_is_one_line(tmp_path):
    job = write_job(tmp_path, scenes={"a": (48, 48)})
    code, stderr = run_on_small_disk(tmp_path, job, kib=4)["first"]
    (line,) = message_lines(stderr)
    assert code == 1 and line.startswith(f"Error: cannot write {tmp_path / 'disk' / 'out'}") and "disk is full" in line
    assert not (tmp_path / "after_full" / "run.json").exists()

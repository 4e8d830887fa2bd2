"""Two runs, one output folder: the second refuses with one line, `--overwrite` never deletes a live run's outputs,
and a run that crashed leaves no lock behind."""

import json
import os
import socket
import subprocess
import sys

import geopandas as gpd
import pytest

from rsrs.workflows.run_lock import LOCK, RunFolderBusyError, hold_run_folder
from tests.workflows.runs import RSRS, message_lines, start_run, tiles_done, wait_until, write_job


def test_a_held_folder_refuses_a_second_holder_naming_the_first(tmp_path):
    with hold_run_folder(tmp_path / "out"):
        with pytest.raises(RunFolderBusyError, match=f"in use by another rsrs run \\(pid {os.getpid()} on "):
            with hold_run_folder(tmp_path / "out"):
                pass
    with hold_run_folder(tmp_path / "out"):  # released when the first holder is done
        pass
    assert (tmp_path / "out" / LOCK).is_file()  # the file stays: only the lock on it comes and goes


def test_a_killed_holder_leaves_no_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from rsrs.workflows.run_lock import hold_run_folder\n"
         "with hold_run_folder(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(600)",
         str(tmp_path / "out")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusyError, match=f"pid {holder.pid} on {socket.gethostname()}"):
            with hold_run_folder(tmp_path / "out"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with hold_run_folder(tmp_path / "out"):  # the kernel released the dead holder's lock
        pass


@pytest.mark.slow
def test_a_second_run_even_with_overwrite_refuses_and_leaves_the_live_run_alone(tmp_path):
    job = write_job(tmp_path, scenes={"big": (480, 480)}, tiling={"tile_size": 40, "overlap": 8, "batch_size": 1})
    first = start_run(job)
    out = tmp_path / "out"
    try:
        wait_until(lambda: tiles_done(out) >= 3, first)
        second = subprocess.run([*RSRS, "run", str(job), "--overwrite"], capture_output=True, text=True, timeout=300)
        assert second.returncode == 1, second.stderr
        (line,) = message_lines(second.stderr)
        assert line.startswith(f"Error: {out} is in use by another rsrs run (pid {first.pid} on ") and "wait" in line
        _, stderr = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    report = json.loads((out / "run.json").read_text())  # the live run finished undisturbed: nothing was deleted
    totals = report["totals"]
    assert totals["tiles_computed"] + totals["tiles_without_data"] == tiles_done(out) == 400
    assert totals["tiles_resumed"] == 0
    assert set(gpd.read_parquet(out / "polygons.parquet").scene_id) == {"big"}

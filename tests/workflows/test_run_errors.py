"""Bad input to `rsrs run`: each is one line and a non-zero exit, recorded in run.json where a run started."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from rsrs.workflows.cli import cli
from tests.rasters import write_geotiff
from tests.servers import free_port

TILING = {"tile_size": 40, "overlap": 8, "batch_size": 2}  # core 24


def write_job(folder, **changes):
    job = {
        "inputs": [{"geotiff": "data/*.tif"}],
        "queries": ["dark ponds"],
        "model": {"preset": "tiny", "device": "cpu"},
        "tiling": TILING,
        "output": {"dir": "out", "threshold": 0.49},
    } | changes
    (folder / "job.yaml").write_text(yaml.safe_dump(job))
    return folder / "job.yaml"


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def write_half_readable_geotiff(path):
    """A striped GeoTIFF whose top rows decode and whose bottom strips are garbage (fails after some tiles)."""
    write_geotiff(path, shape=(120, 48), seed=4, tiled=False)
    raw = bytearray(path.read_bytes())
    n = len(raw)
    raw[n // 2 : n - 16] = b"\xff" * (n - 16 - n // 2)  # the second half of the file: the lower strips
    path.write_bytes(raw)


def message_lines(output: str) -> list[str]:
    """What the CLI said, without the progress bar's frames."""
    return [line for line in output.replace("\r", "\n").splitlines() if line.strip() and "rsrs run:" not in line]


@pytest.mark.parametrize("on_error", ["skip", "fail"])
def test_a_half_readable_geotiff_names_scene_window_and_gdal_and_says_the_mosaic_is_partial(
    tmp_path, scheduler, on_error
):
    (tmp_path / "data").mkdir()
    write_half_readable_geotiff(tmp_path / "data" / "h.tif")
    write_geotiff(tmp_path / "data" / "ok.tif", shape=(48, 48), seed=5)
    job = write_job(tmp_path, on_error=on_error)
    code, output = invoke("run", job, "--scheduler", scheduler)
    report = json.loads((tmp_path / "out" / "run.json").read_text())
    failed = {s["id"]: s for s in report["scenes"] if s["status"] == "failed"}
    assert set(failed) == {"h"}
    error = failed["h"]["error"]
    assert error.startswith(f"{tmp_path / 'data' / 'h.tif'}: cannot read rows ") and ", cols " in error
    assert error.endswith("ZIPDecode:Decoding error at scanline 0")  # GDAL's own words, not a Python repr
    assert failed["h"]["partial_mosaic"] and failed["h"]["tiles_computed"] > 0
    assert "Traceback" not in output
    if on_error == "fail":
        (line,) = message_lines(output)
        assert code == 1 and line.startswith("Error: scene h failed: ") and "masks.zarr/h is partial" in line
    else:
        assert code == 0
        assert "skipped scene h: " in output and "masks.zarr/h is partial" in output
        assert {s["id"] for s in report["scenes"] if s["status"] == "done"} == {"ok"}


def test_a_query_longer_than_the_model_reads_is_one_line(tmp_path):
    (tmp_path / "data").mkdir()
    write_geotiff(tmp_path / "data" / "a.tif", shape=(48, 48))
    job = write_job(tmp_path, queries=["the pond " * 10])  # 89 bytes + end of text; tiny reads 64
    code, output = invoke("run", job)
    assert code == 1 and output.count("\n") == 1
    assert "has 90 tokens but the model reads at most 64; shorten it" in output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".tif", ".bin"])
def test_a_model_checkpoint_that_is_not_a_checkpoint_is_one_line(tmp_path, suffix):
    (tmp_path / "data").mkdir()
    write_geotiff(tmp_path / "data" / "a.tif", shape=(48, 48))
    weights = tmp_path / f"weights{suffix}"
    weights.write_bytes(b"\x00" * 16)
    code, output = invoke("run", write_job(tmp_path, model={"preset": "tiny", "checkpoint": weights.name}))
    assert code == 1 and output.count("\n") == 1
    assert f"is a {suffix} file" in output and "unknown model preset" not in output


def test_an_unreachable_stac_api_is_one_line(tmp_path):
    job = write_job(tmp_path, inputs=[{"stac": {"api": f"http://127.0.0.1:{free_port()}"}}])
    result = subprocess.run(
        [sys.executable, "-c", "from rsrs.workflows.cli import main; main()", "run", str(job)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "cannot reach STAC API" in result.stderr, result.stderr


@pytest.mark.slow  # a minute on 2 cores
def test_ctrl_c_exits_130_with_one_line_and_keeps_finished_tiles(tmp_path):
    (tmp_path / "data").mkdir()
    write_geotiff(tmp_path / "data" / "big.tif", shape=(480, 480), seed=2)
    job = write_job(tmp_path, tiling={"tile_size": 40, "overlap": 8, "batch_size": 1})
    proc = subprocess.Popen(
        [sys.executable, "-c", "from rsrs.workflows.cli import main; main()", "run", str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, signalled as a terminal signals it
    )
    tiles = tmp_path / "out" / "tiles" / "big"
    deadline = time.monotonic() + 120
    while not (tiles.is_dir() and len(list(tiles.glob("*.parquet"))) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert message_lines(stderr) == ["Interrupted; finished work is kept (rerun the same command to resume)."], stderr
    assert np.all([p.stat().st_size > 0 for p in tiles.glob("*.parquet")])

"""The shipped example jobs run as their comments say, with nothing set up beforehand but what they name."""

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest
from click.testing import CliRunner

from rsrs.workflows.cli import cli
from rsrs.workflows.job import load_job
from rsrs.workflows.run import run_job
from tests.servers import rustac_api, rustac_available

JOBS = Path(__file__).resolve().parents[2] / "configs" / "jobs"


@pytest.mark.slow  # a minute on 2 cores
def test_the_geotiff_example_runs_as_shipped(tmp_path):
    result = CliRunner().invoke(cli, ["run", str(JOBS / "geotiff.yaml"), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    frame = gpd.read_parquet(tmp_path / "out" / "polygons.parquet")
    assert set(frame.query_id) == {"buildings", "ponds"}  # the demo model finds both on the shipped scene


@pytest.mark.skipif(not rustac_available(), reason="rustac is not installed (pip install rustac)")
def test_the_stac_api_example_runs_against_the_api_its_comment_serves(tmp_path):
    scene_dir = tmp_path / "stac-scene"
    cli_main = [sys.executable, "-c", "from rsrs.workflows.cli import main; main()"]
    made = subprocess.run(
        [*cli_main, "synth", "scene", str(scene_dir), "--size", "256", "--seed", "1", "--stac", "synth"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    assert "rustac serve" in made.stdout
    items = json.loads((scene_dir / "items.json").read_text())["features"]
    assert items[0]["collection"] == "synth" and Path(items[0]["assets"]["image"]["href"]).is_absolute()
    shipped = load_job(JOBS / "stac-api.yaml")
    with rustac_api(scene_dir / "items.json") as url:
        source = shipped.inputs[0].stac.model_copy(update={"api": url})
        job = shipped.model_copy(
            update={
                "inputs": [shipped.inputs[0].model_copy(update={"stac": source})],
                "output": shipped.output.model_copy(update={"dir": str(tmp_path / "out")}),
            }
        )
        report = run_job(job)
    assert report["totals"]["scenes_done"] == 1 and report["totals"]["tiles_computed"] == 4  # 256 px, 192 px cores

"""The shipped demo: `rsrs run configs/jobs/demo.yaml` scores its queries and draws an overlay; the notebook runs."""

import json
import re
from pathlib import Path

import geopandas as gpd
import nbclient
import nbformat
import numpy as np
import pytest
import rasterio
import xarray as xr
from click.testing import CliRunner
from PIL import Image

from rsrs.pipeline.mosaic import open_mosaic
from rsrs.workflows.cli import cli
from rsrs.workflows.inputs import resolve_scenes
from rsrs.workflows.job import load_job, parse_job
from rsrs.workflows.overlay import MAX_SIDE, MIN_WIDTH, figure_size, write_overlay
from tests.rasters import write_geotiff

ROOT = Path(__file__).resolve().parents[2]
DEMO_JOB = ROOT / "configs" / "jobs" / "demo.yaml"
NOTEBOOK = ROOT / "notebooks" / "results.ipynb"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The shipped demo job, run as the README runs it, with its outputs sent to a temporary folder."""
    out = tmp_path_factory.mktemp("demo") / "out"
    result = CliRunner().invoke(cli, ["run", str(DEMO_JOB), "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    return load_job(DEMO_JOB), out, result.output


def test_demo_job_scores_every_query_against_a_shipped_truth_on_the_scene_grid():
    job = load_job(DEMO_JOB)
    assert job.output.overlay and 3 <= len(job.queries) <= 4
    (scene,) = resolve_scenes(job).scenes
    expressions = {e["id"]: e["text"] for e in json.loads((ROOT / "configs/demo/expressions.json").read_text())}
    for query in job.queries:
        assert query.truth is not None
        # the truth is the mask of the scene-wide expression the query says ("ponds": every pond)
        assert expressions[Path(query.truth).stem] == query.text
        with rasterio.open(query.truth) as truth:
            assert (truth.shape, truth.transform, truth.crs) == (scene.grid.shape, scene.grid.transform, scene.grid.crs)


def test_demo_run_prints_and_records_the_iou_of_each_query(demo):
    job, out, output = demo
    report = json.loads((out / "run.json").read_text())
    (scene,) = report["scenes"]
    assert list(scene["truth_iou"]) == [q.id for q in job.queries]
    for q in job.queries:
        iou = scene["truth_iou"][q.id]
        assert 0.3 < iou <= 1.0  # the shipped demo model finds every demo query (measured: 0.64 to 0.94)
        assert re.search(rf'^IoU vs truth  {q.id}: {iou:.2f}  "{q.text}"$', output, flags=re.MULTILINE), output


def test_demo_run_records_how_long_its_cluster_and_the_workers_model_took_to_start(demo):
    _, out, _ = demo
    start = json.loads((out / "run.json").read_text())["workers"]["start_s"]
    assert set(start) == {"cluster", "model_load"} and all(seconds > 0 for seconds in start.values()), start


def test_demo_iou_equals_a_full_resolution_recount(demo):
    job, out, _ = demo
    (scene,) = json.loads((out / "run.json").read_text())["scenes"]
    probability = open_mosaic(out / "masks.zarr", scene["id"])["probability"].load()
    for q in job.queries:
        predicted = np.nan_to_num(probability.sel(query=q.id).values, nan=0.0) > job.output.threshold
        with rasterio.open(q.truth) as ds:
            truth = ds.read(1) > 0
        union = np.count_nonzero(predicted | truth)
        expected = np.count_nonzero(predicted & truth) / union if union else 1.0
        assert scene["truth_iou"][q.id] == pytest.approx(expected, abs=1e-4)


def test_demo_overlay_is_a_png_of_the_scene_width_with_a_legend_below(demo):
    job, out, _ = demo
    path = out / "overlays" / "scene.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    ny, nx = resolve_scenes(job).scenes[0].grid.shape
    assert (height, width) == figure_size((ny, nx), len(job.queries))
    assert width == nx and height > ny  # 1024 px: drawn 1:1, legend underneath


def test_overlay_of_a_large_scene_is_reduced_and_shows_the_mask(tmp_path):
    ny, nx = 1100, 3300  # reduced 3x to 367 x 1100
    data = np.full((3, ny, nx), 90, dtype=np.uint8)
    write_geotiff(tmp_path / "big.tif", shape=(ny, nx), data=data)
    job = parse_job({"inputs": [{"geotiff": str(tmp_path / "big.tif")}], "queries": ["ponds", "roads"]})
    (scene,) = resolve_scenes(job).scenes
    probs = np.zeros((2, ny, nx), dtype=np.float32)
    probs[0, 300:600, 600:1500] = 0.9  # ponds: a block around reduced row 150, col 350
    probability = xr.DataArray(probs, dims=("query", "y", "x"), coords={"query": ["ponds", "roads"]})
    path = write_overlay(
        tmp_path / "o.png",
        scene=scene,
        probability=probability,
        polygons=gpd.GeoDataFrame({"query_id": []}, geometry=[], crs="EPSG:4326"),
        queries=job.queries,
        threshold=0.5,
    )
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB")).astype(int)
    assert rgb.shape[:2] == figure_size((ny, nx), 2)
    assert rgb.shape[1] == 1100 <= MAX_SIDE
    inside, outside = rgb[150, 350], rgb[150, 900]
    assert tuple(outside) == (90, 90, 90)  # the scene itself, untouched
    assert inside[0] > 150 and inside[2] > 150 and inside[1] < 90  # magenta tint of the first query


def test_a_small_scene_is_enlarged_to_the_minimum_width():
    height, width = figure_size((100, 200), 3)
    assert width == MIN_WIDTH and height > MIN_WIDTH // 2


def test_results_notebook_runs_against_the_demo_run(demo, monkeypatch):
    _, out, _ = demo
    monkeypatch.setenv("RSRS_RUN_DIR", str(out))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # mask, polygons, reprojected mosaic

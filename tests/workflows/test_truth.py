"""IoU against a query's true mask, and the job keys of the demo features (`queries[].truth`, `output.overlay`)."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import yaml
from affine import Affine

from rsrs.core.errors import ConfigError
from rsrs.pipeline.geometry import PixelWindow, RasterGrid
from rsrs.pipeline.mosaic import VARIABLE, create_mosaic, encode_probability, open_mosaic, write_core
from rsrs.workflows.inputs import resolve_scenes
from rsrs.workflows.job import load_job, parse_job
from rsrs.workflows.truth import TruthGridError, check_truths, score_truths
from tests.rasters import write_geotiff

GRID = RasterGrid(shape=(6, 8), transform=Affine(2.0, 0, 500_000.0, 0, -2.0, 4_100_000.0), crs="EPSG:32614")
THRESHOLD = 0.5


def write_mask(path: Path, mask: np.ndarray, *, grid: RasterGrid = GRID, on: int = 1) -> Path:
    """A single-band uint8 raster: ``on`` where ``mask``, 0 elsewhere."""
    profile = {"driver": "GTiff", "count": 1, "dtype": "uint8", "crs": grid.crs, "transform": grid.transform}
    with rasterio.open(path, "w", height=grid.shape[0], width=grid.shape[1], **profile) as ds:
        ds.write(np.where(mask, on, 0).astype(np.uint8), 1)
    return path


def hand_made(folder: Path) -> tuple[np.ndarray, Path, Path]:
    """Two queries on a 6 x 8 grid: probabilities (with NaN and values at the threshold) and their truths."""
    probs = np.zeros((2, 6, 8), dtype=np.float32)
    probs[0, 0:2, 0:4] = 0.9  # 8 predicted px, rows 0-1
    probs[0, 1, 0] = THRESHOLD  # exactly the threshold: not predicted -> 7 predicted
    probs[0, 4:6, 6:8] = 0.8  # 4 more predicted, in another chunk -> 11 predicted
    probs[0, 5, 0:2] = np.nan  # no data under truth: counts as background
    truth_a = np.zeros((6, 8), dtype=bool)
    truth_a[0:3, 2:4] = True  # 6 px; 4 of them predicted (rows 0-1, cols 2-3)
    truth_a[5, 0:2] = True  # 2 px under NaN
    # a: intersection 4; union 11 predicted + 8 true - 4 = 15
    probs[1] = 0.2  # b predicts nothing; truth b is empty: IoU 1 by convention
    path_a = write_mask(folder / "a.tif", truth_a, on=255)
    path_b = write_mask(folder / "b.tif", np.zeros((6, 8), dtype=bool))
    return probs, path_a, path_b


def queries(path_a: Path, path_b: Path) -> list:
    job = parse_job(
        {
            "inputs": [{"geotiff": "x.tif"}],
            "queries": [
                {"id": "a", "text": "a", "truth": str(path_a)},
                "no truth",
                {"text": "b", "truth": str(path_b)},
            ],
        }
    )
    return job.queries


def test_score_truths_gives_the_hand_counted_iou_across_chunks_with_nan_as_background(tmp_path):
    probs, path_a, path_b = hand_made(tmp_path)
    store = tmp_path / "masks.zarr"
    create_mosaic(
        store, "s", GRID, query_ids=["a", "b"], query_texts=["a", "b"], chunk_size=4, fingerprint="x", source="s"
    )
    valid = ~np.isnan(probs[0])
    for r in (0, 4):
        for c in (0, 4):
            core = PixelWindow(r, c, min(4, 6 - r), 4)
            rows, cols = core.slices()
            write_core(store, "s", core, encode_probability(np.nan_to_num(probs[:, rows, cols]), valid[rows, cols]))
    probability = open_mosaic(store, "s")[VARIABLE]
    assert probability.chunks is not None  # read lazily, strip by strip

    scores = score_truths(probability, queries(path_a, path_b), threshold=THRESHOLD)

    assert list(scores) == ["a", "b"]  # only the queries that have a truth
    assert (scores["a"].intersection, scores["a"].union) == (4, 15)
    assert scores["a"].iou == pytest.approx(4 / 15)
    assert scores["b"].iou == 1.0


def test_score_truths_rejects_a_truth_of_another_size(tmp_path):
    probs, path_a, _ = hand_made(tmp_path)
    small = RasterGrid(shape=(5, 8), transform=GRID.transform, crs=GRID.crs)
    path_b = write_mask(tmp_path / "small.tif", np.ones((5, 8), dtype=bool), grid=small)
    probability = xr.DataArray(probs, dims=("query", "y", "x"), coords={"query": ["a", "b"]})
    with pytest.raises(TruthGridError, match="small.tif of query 'b' is 5 x 8 px but the mosaic is 6 x 8"):
        score_truths(probability, queries(path_a, path_b), threshold=THRESHOLD)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (RasterGrid(shape=(6, 9), transform=GRID.transform, crs=GRID.crs), "it is 6 x 8 px, the scene 6 x 9"),
        (
            RasterGrid(shape=(6, 8), transform=Affine(2.0, 0, 500_010.0, 0, -2.0, 4_100_000.0), crs=GRID.crs),
            "transform",
        ),
        (RasterGrid(shape=(6, 8), transform=GRID.transform, crs="EPSG:32615"), "CRS"),
    ],
)
def test_check_truths_names_the_query_scene_and_what_differs(tmp_path, grid, message):
    _, path_a, _ = hand_made(tmp_path)
    write_geotiff(
        tmp_path / "scene.tif", shape=grid.shape, crs=grid.crs, res=2.0, origin=(grid.transform.c, grid.transform.f)
    )
    job = parse_job(
        {"inputs": [{"geotiff": str(tmp_path / "scene.tif")}], "queries": [{"text": "a", "truth": str(path_a)}]}
    )
    scenes = resolve_scenes(job).scenes
    with pytest.raises(TruthGridError, match=rf"a.tif of query 'a' is not on the grid of scene 'scene' \(.*{message}"):
        check_truths(job.queries, scenes)


def test_check_truths_accepts_a_truth_on_the_scene_grid(tmp_path):
    _, path_a, _ = hand_made(tmp_path)
    write_geotiff(tmp_path / "scene.tif", shape=GRID.shape, res=2.0, origin=(GRID.transform.c, GRID.transform.f))
    job = parse_job(
        {"inputs": [{"geotiff": str(tmp_path / "scene.tif")}], "queries": [{"text": "a", "truth": str(path_a)}]}
    )
    check_truths(job.queries, resolve_scenes(job).scenes)  # no error


def test_check_truths_reports_a_missing_truth_file(tmp_path):
    job = parse_job({"inputs": [{"geotiff": "x.tif"}], "queries": [{"text": "a", "truth": str(tmp_path / "none.tif")}]})
    with pytest.raises(FileNotFoundError, match="none.tif"):
        check_truths(job.queries, [])


def write_job(folder: Path, **changes) -> Path:
    job = {"inputs": [{"geotiff": "data/*.tif"}], "queries": ["ponds"]} | changes
    path = folder / "jobs" / "job.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(job))
    return path


def test_job_truth_resolves_against_the_job_folder_and_is_optional(tmp_path):
    path = write_job(tmp_path, queries=[{"id": "p", "text": "ponds", "truth": "../truth/p.tif"}, "roads"])
    job = load_job(path)
    assert job.queries[0].truth == str(tmp_path / "truth" / "p.tif")
    assert job.queries[1].truth is None


@pytest.mark.parametrize(
    ("queries", "message"),
    [
        ([{"text": "ponds", "truht": "p.tif"}], r"unknown key 'queries\[0\].truht'.*did you mean 'truth'"),
        ([{"text": "ponds", "truth": ["p.tif"]}], r"invalid value for 'queries\[0\].truth'"),
    ],
)
def test_job_rejects_a_misspelt_or_mistyped_truth(tmp_path, queries, message):
    with pytest.raises(ConfigError, match=message):
        load_job(write_job(tmp_path, queries=queries))


def test_output_overlay_defaults_to_off_and_takes_only_booleans(tmp_path):
    assert load_job(write_job(tmp_path)).output.overlay is False
    assert parse_job({"inputs": [{"geotiff": "x"}], "queries": ["q"], "output": {"overlay": True}}).output.overlay
    with pytest.raises(ConfigError, match=r"invalid value for 'output.overlay'"):
        parse_job({"inputs": [{"geotiff": "x"}], "queries": ["q"], "output": {"overlay": "sometimes"}})

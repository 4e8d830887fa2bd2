"""RSRefSeg 2 through what a user runs: `rsrs run`, `rsrs train` and `rsrs evaluate` with the `tiny2` preset."""

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import yaml
from click.testing import CliRunner

from rsrs.pipeline.datasets import open_dataset
from rsrs.pipeline.mosaic import open_mosaic
from rsrs.pipeline.synth import write_chip_dataset
from rsrs.workflows.cli import cli
from tests.rasters import write_geotiff


def invoke(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_rsrs_run_with_rsrefseg2_writes_mosaics_and_polygons(tmp_path):
    write_geotiff(tmp_path / "scene.tif", shape=(150, 200), nodata=0, seed=3)
    job = {
        "inputs": [{"geotiff": "scene.tif"}],
        "queries": ["the red roofs", "dark ponds"],
        "model": {"preset": "tiny2", "device": "cpu"},
        "tiling": {"tile_size": 96, "overlap": 16, "batch_size": 3},
        "output": {"dir": "out", "threshold": 0.3},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    invoke("run", tmp_path / "job.yaml")
    prob = open_mosaic(tmp_path / "out" / "masks.zarr", "scene")["probability"]
    assert prob.shape == (2, 150, 200) and list(prob["query"].values) == ["the-red-roofs", "dark-ponds"]
    values = prob.values
    assert np.isnan(values[:, :, :20]).all() and not np.isnan(values[:, :, 30:]).any()  # nodata left band
    report = json.loads((tmp_path / "out" / "run.json").read_text())
    assert report["scenes"][0]["status"] == "done" and report["model"]["source"] == "tiny2"
    frame = gpd.read_parquet(tmp_path / "out" / "polygons.parquet")
    assert set(frame.query_id) <= {"the-red-roofs", "dark-ponds"}


def test_rsrs_train_lowers_rsrefseg2s_loss_and_evaluate_scores_the_result(tmp_path):
    write_chip_dataset(tmp_path / "chips", count=24, chip_size=64, seed=2)
    manifest = tmp_path / "chips" / "manifest.jsonl"
    config = {
        "model": {"preset": "tiny2", "trainable": "all"},
        "data": {"path": str(manifest), "image_size": 64, "num_workers": 0, "val_split": None},
        "optim": {"lr": 5e-3, "batch_size": 4, "max_steps": 20, "warmup_steps": 2},
        "out_dir": str(tmp_path / "run"),
        "checkpoint_every": 20,
        "log_every": 1,
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    invoke("train", tmp_path / "train.yaml")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert {"bce", "dice", "query_similarity", "contrastive"} <= set(records[0])  # the official loss's terms
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses

    out = tmp_path / "report.json"
    model = tmp_path / "run" / "last.safetensors"
    invoke("evaluate", "--model", model, "--data", f"manifest:{manifest}", "--device", "cpu", "--out", out)
    report = json.loads(out.read_text())
    assert report["model"]["name"] == "tiny2"
    assert len(report["samples"]) == len(open_dataset("manifest", Path(manifest), "test"))
    assert 0.0 <= report["metrics"]["gIoU"] <= 1.0

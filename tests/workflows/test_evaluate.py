"""`rsrs evaluate`: the scoring loop with injected predictors, the report, saved predictions, CLI errors."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from rsrs.model import load_model
from rsrs.pipeline.datasets import DatasetFormatError, open_dataset
from rsrs.pipeline.synth import write_chip_dataset
from rsrs.workflows import evaluate as evaluate_module
from rsrs.workflows.cli import cli
from rsrs.workflows.evaluate import evaluate, parse_data_spec
from rsrs.workflows.scoring import model_predictor
from tests.model.test_lora import lora_merged


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chips")
    write_chip_dataset(folder, count=24, chip_size=64, seed=3)
    return folder


def bright_pixels(images, sentences):
    """A deterministic stand-in for a model: 'probability' = red channel / 255."""
    return [im[..., 0].astype(np.float32) / 255 for im in images]


def expected_counts(folder, split="test"):
    """Intersection/union of bright_pixels > 0.5 with each true mask, read straight from the files."""
    out = {}
    for line in (folder / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["split"] != split:
            continue
        prediction = np.asarray(Image.open(folder / row["image"]))[..., 0] > 127.5
        truth = np.asarray(Image.open(folder / row["mask"])) > 0
        out[row["id"]] = (int((prediction & truth).sum()), int((prediction | truth).sum()))
    return out


def test_report_holds_per_sample_counts_and_metrics(dataset):
    report = evaluate(f"manifest:{dataset}", predictor=bright_pixels, batch_size=3)
    expected = expected_counts(dataset)
    got = {s["id"]: (s["intersection"], s["union"]) for s in report["samples"]}
    assert got == expected
    ious = [i / u if u else 1.0 for i, u in expected.values()]
    assert report["metrics"]["gIoU"] == pytest.approx(np.mean(ious))
    inter, union = np.sum(list(expected.values()), axis=0)
    assert report["metrics"]["cIoU"] == pytest.approx(inter / union)
    assert report["data"] == {"format": "manifest", "path": str(dataset), "split": "test", "samples": len(expected)}
    assert sum(c["samples"] for c in report["per_category"].values()) == len(expected)


def test_synth_data_is_also_scored_per_expression_form(dataset):
    report = evaluate(f"manifest:{dataset}", predictor=bright_pixels, batch_size=3)
    forms = {json.loads(line)["id"]: json.loads(line)["form"] for line in (dataset / "manifest.jsonl").open()}
    assert {s["id"]: s["form"] for s in report["samples"]} == {s["id"]: forms[s["id"]] for s in report["samples"]}
    by_form: dict[str, list[float]] = {}
    for s in report["samples"]:
        by_form.setdefault(s["form"], []).append(s["iou"])
    assert set(report["per_form"]) == set(by_form)
    for form, ious in by_form.items():
        assert report["per_form"][form]["samples"] == len(ious)
        assert report["per_form"][form]["gIoU"] == pytest.approx(np.mean(ious))
        assert report["per_form"][form]["Pr@0.5"] == pytest.approx(np.mean(np.array(ious) >= 0.5))


def test_empty_predictions_score_zero_and_masks_drive_the_resolution(dataset):
    def empty_at_half_size(images, sentences):
        return [np.zeros((im.shape[0] // 2, im.shape[1] // 2), np.float32) for im in images]

    report = evaluate(f"manifest:{dataset}", predictor=empty_at_half_size, split="val")
    assert report["metrics"]["gIoU"] == 0.0 and report["metrics"]["Pr@0.5"] == 0.0
    assert all(s["intersection"] == 0 and s["union"] > 0 for s in report["samples"])


def test_save_predictions_writes_one_png_per_sample_id(dataset, tmp_path):
    report = evaluate(f"manifest:{dataset}", predictor=bright_pixels, save_predictions=tmp_path / "preds", limit=3)
    assert len(report["samples"]) == 3
    reader = open_dataset("manifest", dataset, "test")
    for i, s in enumerate(report["samples"]):
        saved = np.asarray(Image.open(tmp_path / "preds" / f"{s['id']}.png"))
        assert np.array_equal(saved > 0, reader[i].image[..., 0] > 127.5)


@pytest.mark.parametrize(
    ("spec", "message"),
    [("coco:/data", "unknown dataset format 'coco'"), ("just/a/path", "must be FORMAT:PATH")],
)
def test_bad_data_specs_are_refused(spec, message):
    with pytest.raises(DatasetFormatError, match=message):
        parse_data_spec(spec)


@pytest.mark.parametrize(
    ("data", "split", "message"),
    [
        ("coco:{d}", "test", "unknown dataset format 'coco'"),
        ("manifest:{d}/missing.jsonl", "test", "not found"),
        ("manifest:{d}", "holdout", "no samples in split 'holdout'"),
    ],
)
def test_cli_bad_input_is_one_clear_line(dataset, data, split, message):
    result = CliRunner().invoke(
        cli, ["evaluate", "--model", "tiny", "--data", data.format(d=dataset), "--split", split]
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0]


def test_cli_scores_the_tiny_model_end_to_end(dataset, tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model",
            "tiny",
            "--data",
            f"manifest:{dataset / 'manifest.jsonl'}",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--save-predictions",
            str(tmp_path / "preds"),
            "--batch-size",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    n = len(open_dataset("manifest", dataset, "test"))
    assert report["model"]["name"] == "tiny" and len(report["samples"]) == n
    assert {"id", "intersection", "union", "iou"} <= set(report["samples"][0])
    assert {"gIoU", "cIoU", "Pr@0.5", "Pr@0.9"} <= set(report["metrics"])
    assert len(list((tmp_path / "preds").glob("*.png"))) == n


def test_a_model_loaded_to_be_scored_runs_its_lora_adapters_merged(dataset, monkeypatch):
    scored = []
    monkeypatch.setattr(
        evaluate_module, "model_predictor", lambda net, **kw: scored.append(net) or model_predictor(net, **kw)
    )
    evaluate(f"manifest:{dataset}", model="tiny", device="cpu", limit=2)
    assert lora_merged(scored[0]) == {True}


def test_model_predictor_encodes_a_shared_image_once_and_answers_as_per_sample_runs():
    model = load_model("tiny", device="cpu")
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2))
    images, sentences = [a, b, a.copy()], ["the red building", "the pond", "the largest field"]
    encoded = []
    encode = model.encode_images
    model.encode_images = lambda batch: encoded.append(len(batch)) or encode(batch)
    together = model_predictor(model)(images, sentences)
    assert encoded == [2]
    alone = [model_predictor(model)([im], [s])[0] for im, s in zip(images, sentences, strict=True)]
    for joint, single in zip(together, alone, strict=True):
        np.testing.assert_allclose(joint, single, rtol=1e-5, atol=1e-6)
    assert not np.allclose(together[0], together[2])  # one image, two expressions, two answers

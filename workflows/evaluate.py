"""``rsrs evaluate``: score a model on a referring dataset split with gIoU, cIoU and Pr@X, overall and per category
(and per expression form on ``rsrs synth`` data); the scoring itself is :mod:`rsrs.workflows.scoring`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
from PIL import Image

from rsrs.core.files import write_text_atomic
from rsrs.pipeline.datasets import FORMATS, DatasetFormatError, ReferringDataset, open_dataset
from rsrs.workflows.scoring import Predictor, model_predictor, report, score_dataset


def parse_data_spec(spec: str) -> tuple[str, str]:
    """``"FORMAT:PATH"`` -> (format, path), with a clear error for anything else."""
    fmt, sep, path = spec.partition(":")
    if not sep or not path:
        raise DatasetFormatError(f"--data {spec!r} must be FORMAT:PATH, e.g. manifest:data/synth/manifest.jsonl")
    if fmt not in FORMATS:
        raise DatasetFormatError(f"unknown dataset format {fmt!r} in --data; use one of: {', '.join(FORMATS)}")
    return fmt, path


def _prediction_writer(folder: Path) -> Callable[[str, np.ndarray], None]:
    folder.mkdir(parents=True, exist_ok=True)

    def write(sample_id: str, prediction: np.ndarray) -> None:
        name = sample_id.replace("/", "_").replace(os.sep, "_")
        Image.fromarray(prediction.astype(np.uint8) * 255).save(folder / f"{name}.png")

    return write


def evaluate(
    data: str | ReferringDataset,
    *,
    model: str | None = None,
    predictor: Predictor | None = None,
    split: str = "test",
    batch_size: int = 8,
    device: str = "auto",
    image_size: int | None = None,
    threshold: float = 0.5,
    limit: int | None = None,
    save_predictions: str | Path | None = None,
    progress: bool = False,
) -> dict:
    """Score ``model`` (preset, config or checkpoint) or a ready ``predictor`` on ``data`` ("FORMAT:PATH" or a
    reader); returns the report dict (see :func:`report`)."""
    if (model is None) == (predictor is None):
        raise ValueError("give exactly one of model or predictor")
    if isinstance(data, str):
        fmt, path = parse_data_spec(data)
        reader = open_dataset(fmt, path, split)
        data_info = {"format": fmt, "path": path, "split": split, "samples": len(reader)}
    else:
        reader = data
        data_info = {"name": getattr(data, "name", type(data).__name__), "samples": len(reader)}
    if predictor is None:
        from rsrs.model import load_model
        from rsrs.model.lora import merge_lora_adapters

        net = load_model(model, device=device)
        merge_lora_adapters(net)  # loaded to be scored only: its adapters need not run beside their layers
        predictor = model_predictor(net, image_size=image_size)
        model_info = {
            "spec": str(model),
            "name": net.config.name,
            "device": str(net.device),
            "parameters": sum(p.numel() for p in net.parameters()),
        }
    else:
        model_info = {"spec": getattr(predictor, "__name__", "predictor")}
    writer = _prediction_writer(Path(save_predictions)) if save_predictions is not None else None
    scores = score_dataset(
        predictor,
        reader,
        batch_size=batch_size,
        threshold=threshold,
        limit=limit,
        on_prediction=writer,
        progress=progress,
    )
    return report(scores, model=model_info, data=data_info)


@click.command("evaluate")
@click.option(
    "--model",
    "model_spec",
    required=True,
    metavar="MODEL",
    help="Preset name (see `rsrs models`), model config YAML, checkpoint .safetensors, or released RSRefSeg 2 .pth.",
)
@click.option(
    "--data",
    "data_spec",
    required=True,
    metavar="FORMAT:PATH",
    help=f"Dataset to score; FORMAT is one of {', '.join(FORMATS)}.",
)
@click.option("--split", default="test", show_default=True, help="Dataset split to score.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the full JSON report (metrics + per-sample counts) here.",
)
@click.option(
    "--save-predictions",
    type=click.Path(file_okay=False),
    default=None,
    help="Write each predicted mask as DIR/<sample id>.png (0/255).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--image-size",
    type=click.IntRange(min=16),
    default=None,
    help="Side the model sees when a batch mixes image sizes (default: the batch's largest side).",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Probability above which a pixel is predicted as the target.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Score only the first N samples.")
def evaluate_command(
    model_spec: str,
    data_spec: str,
    split: str,
    out: str | None,
    save_predictions: str | None,
    batch_size: int,
    device: str,
    image_size: int | None,
    threshold: float,
    limit: int | None,
) -> None:
    """Score a model on a referring dataset: gIoU, cIoU and Pr@0.5..0.9, overall, per category and (for `rsrs
    synth` data) per expression form.

    \b
    Examples:
      rsrs synth dataset data/synth --count 200
      rsrs evaluate --model tiny --data manifest:data/synth/manifest.jsonl
      rsrs evaluate --model runs/ft/best.safetensors --data rrsisd:/data/RRSIS-D \\
                    --out report.json --save-predictions preds/

    \b
    Formats (FORMAT:PATH):
      manifest:FILE_OR_DIR   JSON lines written by `rsrs synth dataset`
      rrsisd:DIR             rrsisd/refs(unc).p, rrsisd/instances.json, images/rrsisd/JPEGImages/
      refsegrs:DIR           images/, masks/, output_phrase_{train,val,test}.txt
      risbench:DIR           img_rgb/, mask/, output_phrase_{train,val,test}.txt
    """
    result = evaluate(
        data_spec,
        model=model_spec,
        split=split,
        batch_size=batch_size,
        device=device,
        image_size=image_size,
        threshold=threshold,
        limit=limit,
        save_predictions=save_predictions,
        progress=True,
    )
    metrics = result["metrics"]
    click.echo(f"{metrics['samples']} samples of {data_spec} ({split})")
    click.echo("  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "samples"))
    for title, key in (("per category", "per_category"), ("per expression form", "per_form")):
        if result.get(key):
            click.echo(f"{title}:")
        for group, m in result.get(key, {}).items():
            line = f"  {group:<12} n={m['samples']:<5} gIoU {m['gIoU']:.4f}  cIoU {m['cIoU']:.4f}"
            click.echo(f"{line}  Pr@0.5 {m['Pr@0.5']:.4f}")
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(result, indent=1) + "\n")
        click.echo(f"report: {out}")

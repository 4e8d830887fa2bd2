"""``rsrs evaluate``: score a model on a referring dataset split with gIoU, cIoU and Pr@X, overall and per category.

The model sees each batch at one common size (images resized when they differ), its probabilities are resized
back to each sample's mask and thresholded there, so every metric is computed at the mask's own resolution.
The scoring loop takes any *predictor* (images + sentences -> probability maps), so it is tested without a
model and serves validation during training too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from rsrs.core.files import write_text_atomic
from rsrs.pipeline.datasets import FORMATS, DatasetFormatError, ReferringDataset, open_dataset
from rsrs.workflows.metrics import SampleScore, score_sample, summarize, summarize_by

# images: list of (H_i, W_i, 3) uint8; sentences: one per image -> list of (H_i, W_i) float probabilities.
Predictor = Callable[[Sequence[np.ndarray], Sequence[str]], Sequence[np.ndarray]]


def parse_data_spec(spec: str) -> tuple[str, str]:
    """``"FORMAT:PATH"`` -> (format, path), with a clear error for anything else."""
    fmt, sep, path = spec.partition(":")
    if not sep or not path:
        raise DatasetFormatError(f"--data {spec!r} must be FORMAT:PATH, e.g. manifest:data/synth/manifest.jsonl")
    if fmt not in FORMATS:
        raise DatasetFormatError(f"unknown dataset format {fmt!r} in --data; use one of: {', '.join(FORMATS)}")
    return fmt, path


def model_predictor(model: torch.nn.Module, *, image_size: int | None = None) -> Predictor:
    """A predictor running ``model`` on a batch, pairing image i with sentence i.

    Images of different sizes are resized to ``image_size`` (default: the largest side in the batch);
    probabilities come back at each image's own size. Samples of a batch that share an image (datasets keep an
    image's expressions together) are encoded once: the image encoders are nearly all of the model's cost.
    """

    @torch.inference_mode()
    def predict(images: Sequence[np.ndarray], sentences: Sequence[str]) -> list[np.ndarray]:
        shapes = [im.shape[:2] for im in images]
        if len(set(shapes)) == 1 and image_size is None:
            size = shapes[0]
        else:
            side = image_size or max(max(s) for s in shapes)
            size = (side, side)
        row_of: dict[bytes, int] = {}  # image digest -> its row among the distinct images
        distinct, image_index = [], []
        for im in images:
            row = row_of.setdefault(_digest(im), len(distinct))
            if row == len(distinct):
                distinct.append(im)
            image_index.append(row)
        batch = torch.stack([image_to_tensor(im, size) for im in distinct]).to(model.device)  # U x 3 x h x w uint8
        was_training = model.training
        model.eval()  # also when called for validation in the middle of training
        try:
            feats = model.encode_images(batch)
            texts = model.encode_texts(list(sentences))
            pairs = torch.arange(len(sentences), device=batch.device)
            logits, _ = model.decode_pairs(feats, texts, torch.tensor(image_index, device=batch.device), pairs)
            logits = logits.float()  # B x h x w
        finally:
            model.train(was_training)
        probs = torch.sigmoid(logits)[:, None]  # B x 1 x h x w
        out = []
        for p, shape in zip(probs, shapes, strict=True):
            if tuple(p.shape[-2:]) != tuple(shape):
                p = F.interpolate(p[None], size=shape, mode="bilinear", align_corners=False)[0]
            out.append(p[0].cpu().numpy())
        return out

    return predict


def _digest(image: np.ndarray) -> bytes:
    """A key that equal images (same shape and pixels) share."""
    h = hashlib.blake2b(str(image.shape).encode(), digest_size=16)
    h.update(np.ascontiguousarray(image).data)
    return h.digest()


def image_to_tensor(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Image H x W x 3 uint8 -> 3 x size uint8 tensor (bilinear, antialiased when shrinking)."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # 3 x H x W
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    resized = F.interpolate(t[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


def score_dataset(
    predictor: Predictor,
    reader: Sequence,
    *,
    batch_size: int = 8,
    threshold: float = 0.5,
    limit: int | None = None,
    on_prediction: Callable[[str, np.ndarray], None] | None = None,
    progress: bool = False,
) -> list[SampleScore]:
    """Per-sample scores of ``predictor`` over a reader's first ``limit`` samples (all by default)."""
    n = len(reader) if limit is None else min(limit, len(reader))
    scores = []
    with tqdm(total=n, desc="evaluate", unit="sample", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            samples = [reader[i] for i in range(start, min(start + batch_size, n))]
            probs = predictor([s.image for s in samples], [s.sentence for s in samples])
            for sample, p in zip(samples, probs, strict=True):
                prediction = np.asarray(p) > threshold
                if prediction.shape != sample.mask.shape:  # predictors answer at image size; masks rule
                    prediction = np.asarray(Image.fromarray(prediction).resize(sample.mask.shape[::-1], Image.NEAREST))
                form = sample.metadata.get("form")
                scores.append(score_sample(sample.id, prediction, sample.mask, sample.category, form))
                if on_prediction is not None:
                    on_prediction(sample.id, prediction)
            bar.update(len(samples))
    return scores


def report(scores: Sequence[SampleScore], *, model: dict, data: dict) -> dict:
    """The evaluation report: what was scored, overall and per-category metrics (and per expression form when the
    dataset records forms), and every sample's counts."""
    return {
        "model": model,
        "data": data,
        "metrics": summarize(scores),
        "per_category": summarize_by(scores, "category"),
        **({"per_form": summarize_by(scores, "form")} if any(s.form for s in scores) else {}),
        "samples": [s.to_json() for s in scores],
    }


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

        net = load_model(model, device=device)
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
    help="Preset name (see `rsrs models`), model config YAML, or checkpoint .safetensors.",
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

"""Scoring a model on referring samples: a *predictor* (images + sentences -> probability maps) made from a model,
per-sample IoU counts at each mask's own resolution, and the report that ``rsrs evaluate`` writes.

The model sees each batch at one common size (images resized when they differ); its probabilities are resized
back to each sample's mask and thresholded there. The scoring loop takes any predictor, so it is tested without a
model, and training's validation uses it too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from rsrs.workflows.metrics import SampleScore, score_sample, summarize, summarize_by

# images: list of (H_i, W_i, 3) uint8; sentences: one per image -> list of (H_i, W_i) float probabilities.
Predictor = Callable[[Sequence[np.ndarray], Sequence[str]], Sequence[np.ndarray]]


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

"""The referring-segmentation metrics of the field, at each mask's original resolution.

Per sample: intersection, union and IoU (an empty ground truth with an empty prediction scores 1; an empty
union never yields NaN). Over samples: gIoU (= mIoU, the mean per-sample IoU), cIoU (= oIoU, summed
intersections over summed unions) and Pr@X (share of samples with IoU >= X, X in 0.5..0.9), overall, per
category and, for datasets that name it (``rsrs synth``: category, colour, size, position, relation, ordinal), per
expression form.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class SampleScore:
    """One sample's overlap counts (pixels) and IoU."""

    id: str
    intersection: int
    union: int
    category: str | None = None
    form: str | None = None  # the expression's grammar form, when the dataset records it

    @property
    def iou(self) -> float:
        """Intersection over union; 1.0 when both masks are empty."""
        return self.intersection / self.union if self.union else 1.0

    def to_json(self) -> dict:
        """The report's per-sample entry."""
        entry = {
            "id": self.id,
            "category": self.category,
            "intersection": self.intersection,
            "union": self.union,
            "iou": self.iou,
        }
        return entry if self.form is None else {**entry, "form": self.form}


def score_sample(
    sample_id: str,
    prediction: np.ndarray,
    truth: np.ndarray,
    category: str | None = None,
    form: str | None = None,
) -> SampleScore:
    """Overlap of a predicted and a true mask, both (H, W) bool on the same pixels."""
    if prediction.shape != truth.shape:
        raise ValueError(f"sample {sample_id}: prediction {prediction.shape} and mask {truth.shape} differ in shape")
    prediction, truth = prediction.astype(bool), truth.astype(bool)
    return SampleScore(
        id=sample_id,
        intersection=int(np.count_nonzero(prediction & truth)),
        union=int(np.count_nonzero(prediction | truth)),
        category=category,
        form=form,
    )


def summarize(scores: Iterable[SampleScore]) -> dict:
    """gIoU, cIoU, Pr@X and the sample count of a group of samples (zeros for an empty group)."""
    scores = list(scores)
    ious = np.array([s.iou for s in scores], dtype=np.float64)
    inter = sum(s.intersection for s in scores)
    union = sum(s.union for s in scores)
    out = {
        "samples": len(scores),
        "gIoU": float(ious.mean()) if len(scores) else 0.0,
        "cIoU": inter / union if union else (1.0 if scores else 0.0),
    }
    for t in THRESHOLDS:
        out[f"Pr@{t:.1f}"] = float((ious >= t).mean()) if len(scores) else 0.0
    return out


def summarize_by(scores: Iterable[SampleScore], key: str) -> dict[str, dict]:
    """:func:`summarize` per value of ``key`` ('category' or 'form'), for the samples where it is known."""
    groups: dict[str, list[SampleScore]] = {}
    for s in scores:
        value = getattr(s, key)
        if value is not None:
            groups.setdefault(value, []).append(s)
    return {v: summarize(g) for v, g in sorted(groups.items())}

"""Scaling of raw band values to the model's uint8 input range.

The stretch is resolved once per scene (:func:`resolve_scaling`), from a decimated read that GDAL serves
from overviews when the file has them, so every tile of a scene sees the same mapping and tile borders show
no seams. :func:`apply_scaling` then maps each tile with those fixed ``(lo, hi)`` pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import rasterio
from rasterio.enums import Resampling

ScalingMethod = Literal["auto", "percentile", "minmax", "range", "none"]

#: The longest side, in pixels, of the decimated read that statistics are computed from.
STATS_SIZE = 1024

IDENTITY: tuple[float, float] = (0.0, 255.0)


@dataclass(frozen=True)
class ScalingSpec:
    """How to map band values to 0..255.

    ``auto``: uint8 as is, anything else a percentile stretch; ``percentile``: the ``percentiles`` (low,
    high) of each band's valid pixels; ``minmax``: each band's valid min and max; ``range``: the fixed
    ``value_range`` for every band; ``none``: values already in 0..255 (clipped).
    """

    method: ScalingMethod = "auto"
    percentiles: tuple[float, float] = (2.0, 98.0)
    value_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        if self.method == "range":
            if self.value_range is None or not self.value_range[0] < self.value_range[1]:
                raise ValueError(f"scaling 'range' needs [low, high] with low < high, got {self.value_range}")


#: The default: uint8 untouched, other dtypes stretched between their 2nd and 98th percentiles.
DEFAULT_SCALING = ScalingSpec()


def _valid_sample(dataset: rasterio.DatasetReader, band: int) -> np.ndarray:
    """1-D float64 valid values of ``band`` read at most :data:`STATS_SIZE` pixels a side."""
    factor = max(1, math.ceil(max(dataset.height, dataset.width) / STATS_SIZE))
    out_shape = (math.ceil(dataset.height / factor), math.ceil(dataset.width / factor))
    data = dataset.read(band, out_shape=out_shape, masked=True, resampling=Resampling.nearest)
    values = np.asarray(data.compressed(), dtype=np.float64)
    return values[np.isfinite(values)]


def resolve_scaling(
    bands: Sequence[tuple[rasterio.DatasetReader, int]], *, dtype: str, spec: ScalingSpec
) -> tuple[tuple[float, float], ...]:
    """``(lo, hi)`` per band for ``spec``; ``bands`` are open datasets with a 1-based band index each."""
    method = spec.method
    if method == "auto":
        method = "none" if np.dtype(dtype) == np.uint8 else "percentile"
    if method == "none":
        return tuple(IDENTITY for _ in bands)
    if method == "range":
        assert spec.value_range is not None
        lo, hi = spec.value_range
        return tuple((float(lo), float(hi)) for _ in bands)
    pairs = []
    for dataset, band in bands:
        values = _valid_sample(dataset, band)
        if values.size == 0:  # an all-nodata band: nothing will be read from it anyway
            pairs.append(IDENTITY)
            continue
        if method == "minmax":
            lo, hi = float(values.min()), float(values.max())
        else:
            lo, hi = (float(v) for v in np.percentile(values, spec.percentiles))
        pairs.append((lo, hi if hi > lo else lo + 1.0))
    return tuple(pairs)


def is_identity(dtype: np.dtype, scaling: Sequence[tuple[float, float]]) -> bool:
    """Whether :func:`apply_scaling` returns values of ``dtype`` as they are (uint8 stretched over 0-255)."""
    return np.dtype(dtype) == np.uint8 and all(pair == IDENTITY for pair in scaling)


def apply_scaling(values: np.ndarray, scaling: Sequence[tuple[float, float]]) -> np.ndarray:
    """Map ``values`` (C, h, w), any dtype, to uint8 (C, h, w) with one ``(lo, hi)`` per band."""
    C = values.shape[0]
    assert len(scaling) == C, f"{len(scaling)} scaling pairs for {C} bands"
    if is_identity(values.dtype, scaling):
        return values
    lo = np.array([p[0] for p in scaling], dtype=np.float32).reshape(C, 1, 1)
    hi = np.array([p[1] for p in scaling], dtype=np.float32).reshape(C, 1, 1)
    out = (values.astype(np.float32) - lo) * (255.0 / (hi - lo))
    np.nan_to_num(out, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    np.clip(out, 0.0, 255.0, out=out)
    return np.rint(out).astype(np.uint8)

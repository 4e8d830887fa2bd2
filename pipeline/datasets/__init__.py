"""Referring datasets (RRSIS-D, RefSegRS, RISBench, this project's manifest) behind one entry point.

>>> reader = open_dataset("manifest", "data/synth/manifest.jsonl", "test")
>>> sample = reader[0]   # ReferringSample: image H x W x 3 uint8, mask H x W bool, sentence, metadata
"""

from __future__ import annotations

from pathlib import Path

from rsrs.pipeline.datasets.base import (
    DatasetFormatError,
    DatasetNotFoundError,
    ReferringDataset,
    ReferringSample,
)
from rsrs.pipeline.datasets.manifest import open_manifest
from rsrs.pipeline.datasets.phrases import open_refsegrs, open_risbench
from rsrs.pipeline.datasets.rrsisd import open_rrsisd

OPENERS = {"rrsisd": open_rrsisd, "refsegrs": open_refsegrs, "risbench": open_risbench, "manifest": open_manifest}
FORMATS = tuple(OPENERS)


def open_dataset(fmt: str, path: str | Path, split: str) -> ReferringDataset:
    """The ``split`` of the dataset at ``path`` in format ``fmt`` (one of :data:`FORMATS`); never empty."""
    if fmt not in OPENERS:
        raise DatasetFormatError(f"unknown dataset format {fmt!r}; use one of: {', '.join(FORMATS)}")
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(f"{fmt} dataset not found at {path}; check the path")
    reader = OPENERS[fmt](path, split)
    if len(reader) == 0:
        raise DatasetFormatError(
            f"the {fmt} dataset at {path} has no samples in split {split!r}; "
            "pick another split (usually train, val or test)"
        )
    return reader


__all__ = [
    "FORMATS",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "ReferringDataset",
    "ReferringSample",
    "open_dataset",
]

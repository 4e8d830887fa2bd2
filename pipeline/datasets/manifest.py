"""This project's own format (what ``rsrs synth dataset`` writes): JSON lines with image, mask, sentence, split.

Each line: ``{"image", "mask", "sentence", "split", ...}`` with paths relative to the manifest's folder (or
absolute); optional ``id`` (default: the line number) and ``category``; other keys pass through as metadata.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from rsrs.pipeline.datasets.base import DatasetFormatError, ReferringDataset, SampleRecord, read_mask_file, require

REQUIRED = ("image", "mask", "sentence", "split")


def read_manifest(path: Path) -> list[dict]:
    """Every line of a manifest (a ``.jsonl`` file, or a folder holding ``manifest.jsonl``), validated."""
    path = path / "manifest.jsonl" if path.is_dir() else path
    rows = []
    for n, line in enumerate(require(path, "manifest").read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetFormatError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise DatasetFormatError(f"{path}:{n}: manifest line lacks {', '.join(missing)}")
        row.setdefault("id", str(n))
        row["_folder"] = path.parent
        rows.append(row)
    return rows


def open_manifest(path: Path, split: str) -> ReferringDataset:
    """The ``split`` of a manifest file (or of ``manifest.jsonl`` inside a folder)."""
    records = []
    for row in read_manifest(path):
        if row["split"] != split:
            continue
        folder = row.pop("_folder")
        metadata = {k: v for k, v in row.items() if k not in ("image", "mask", "sentence")}
        metadata["id"] = str(metadata["id"])
        metadata.setdefault("category", None)
        records.append(
            SampleRecord(
                image=folder / row["image"],
                mask=partial(read_mask_file, folder / row["mask"]),
                sentence=row["sentence"],
                metadata=metadata,
            )
        )
    return ReferringDataset(records, name=f"manifest:{path}:{split}")

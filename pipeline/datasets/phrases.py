"""RefSegRS and RISBench: image and mask files side by side, sentences in ``output_phrase_<split>.txt``.

RefSegRS: ``images/<id>.tif``, ``masks/<id>.tif``, lines "<id> <sentence>".
RISBench: ``img_rgb/<name>.png``, ``mask/<name>.png``, lines "<name>.png <sentence>" (the id carries the
extension).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from rsrs.pipeline.datasets.base import (
    ReferringDataset,
    SampleRecord,
    read_mask_file,
    read_phrases,
    require,
    unique_ids,
)


def _phrase_dataset(root: Path, split: str, *, images: str, masks: str, suffix: str, name: str) -> ReferringDataset:
    require(root, f"{name} dataset folder")
    pairs = read_phrases(root / f"output_phrase_{split}.txt")
    records = []
    for sample_id, (file_id, sentence) in zip(unique_ids([p[0] for p in pairs]), pairs, strict=True):
        file_name = file_id if Path(file_id).suffix else file_id + suffix
        records.append(
            SampleRecord(
                image=root / images / file_name,
                mask=partial(read_mask_file, root / masks / file_name),
                sentence=sentence,
                metadata={"id": sample_id, "category": None, "image_id": file_id, "split": split},
            )
        )
    return ReferringDataset(records, name=f"{name}:{root}:{split}")


def open_refsegrs(root: Path, split: str) -> ReferringDataset:
    """The ``split`` of a RefSegRS folder (``images/``, ``masks/``, ``output_phrase_<split>.txt``)."""
    return _phrase_dataset(root, split, images="images", masks="masks", suffix=".tif", name="refsegrs")


def open_risbench(root: Path, split: str) -> ReferringDataset:
    """The ``split`` of a RISBench folder (``img_rgb/``, ``mask/``, ``output_phrase_<split>.txt``)."""
    return _phrase_dataset(root, split, images="img_rgb", masks="mask", suffix=".png", name="risbench")

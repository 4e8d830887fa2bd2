"""RRSIS-D: refs in ``rrsisd/refs(unc).p``, COCO-like masks in ``rrsisd/instances.json``, JPEGs beside them.

Layout under the dataset root: ``rrsisd/refs(unc).p`` (pickled list of refs: image_id, split, sentences
[{raw, sent, ...}], file_name, ann_id, ref_id, category_id), ``rrsisd/instances.json`` (``images``,
``annotations`` whose ``segmentation`` is a list holding one COCO RLE, ``categories``) and
``images/rrsisd/JPEGImages/*.jpg``. Each sentence of a ref is one sample. Some masks are a pixel off their
image's size: they are resized (nearest) onto the image.
"""

from __future__ import annotations

import json
import pickle
from functools import partial
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

from rsrs.pipeline.datasets.base import DatasetFormatError, ReferringDataset, SampleRecord, fit_mask, require


def decode_segmentation(segmentation: list, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (RLEs with str/bytes/list counts, or polygons) as (height, width) bool."""
    parts = segmentation if isinstance(segmentation, list) else [segmentation]
    rles = []
    for part in parts:
        if isinstance(part, dict) and isinstance(part["counts"], list):  # uncompressed RLE
            rles.append(coco_mask.frPyObjects(part, *part["size"]))
        elif isinstance(part, dict):
            counts = part["counts"]
            rles.append({"size": part["size"], "counts": counts.encode() if isinstance(counts, str) else counts})
        else:  # a polygon: flat [x0, y0, x1, y1, ...]
            rles.extend(coco_mask.frPyObjects([part], height, width))
    decoded = coco_mask.decode(rles)  # (h, w, n) uint8
    return decoded.any(axis=2)


def _ref_mask(segmentation: list, size: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    return fit_mask(decode_segmentation(segmentation, *size), shape)


def open_rrsisd(root: Path, split: str) -> ReferringDataset:
    """The ``split`` (train / val / test) of an RRSIS-D folder."""
    refs_path = require(root / "rrsisd" / "refs(unc).p", "RRSIS-D refs file rrsisd/refs(unc).p")
    instances_path = require(root / "rrsisd" / "instances.json", "RRSIS-D instances file rrsisd/instances.json")
    image_dir = root / "images" / "rrsisd" / "JPEGImages"
    with open(refs_path, "rb") as f:
        refs = pickle.load(f)
    instances = json.loads(instances_path.read_text())
    images = {im["id"]: im for im in instances.get("images", [])}
    annotations = {a["id"]: a for a in instances.get("annotations", [])}
    categories = {c["id"]: c["name"] for c in instances.get("categories", [])}
    records = []
    for ref in refs:
        if ref["split"] != split:
            continue
        if ref["ann_id"] not in annotations:
            raise DatasetFormatError(
                f"{refs_path}: ref {ref['ref_id']} names annotation {ref['ann_id']}, which {instances_path.name} lacks"
            )
        ann = annotations[ref["ann_id"]]
        image = images.get(ref["image_id"], {})
        size = (image.get("height"), image.get("width"))
        if None in size:
            size = tuple(ann["segmentation"][0]["size"])
        for k, sentence in enumerate(ref["sentences"]):
            records.append(
                SampleRecord(
                    image=image_dir / image.get("file_name", ref["file_name"]),
                    mask=partial(_ref_mask, ann["segmentation"], size),
                    sentence=sentence.get("raw") or sentence["sent"],
                    metadata={
                        "id": f"{ref['ref_id']}_{sentence.get('sent_id', k)}",
                        "category": categories.get(ref["category_id"]),
                        "ref_id": ref["ref_id"],
                        "ann_id": ref["ann_id"],
                        "image_id": ref["image_id"],
                        "split": split,
                    },
                )
            )
    return ReferringDataset(records, name=f"rrsisd:{root}:{split}")

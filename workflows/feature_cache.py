"""Image features computed once, for training with both image encoders frozen (``data.cache_image_features``).

When neither image encoder trains, each training image's features (SAM's embedding and SigLIP's tokens, plus SAM
2's high-resolution maps for RSRefSeg 2) are the same at every step. Computing them once and reading them back
leaves a step only the text encoder, prompter and mask decoder: for the ``demo`` model on CPU that is about 15x
less work per sample. The cache holds one float32 ``.npy`` array per tensor of the model's image features (exactly
what the encoders return; float16 would flush tiny activations to zero), one row per distinct image, in
OUT_DIR/image_features/, opened memory-mapped. Its metadata (``meta.json``) is removed first and written last, in
one rename, so a cache interrupted while written has none and is computed again; it is reused (by ``--resume`` or a
rerun) only when its fingerprint still matches: the image encoders' weights, the image size and the list of images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rsrs.core.files import output_error, write_text_atomic
from rsrs.model.outputs import ImageFeatures
from rsrs.model.segmenter import PairwiseSegmenter
from rsrs.pipeline.datasets.base import ReferringDataset, read_rgb
from rsrs.workflows.scoring import image_to_tensor

CACHE_DIR = "image_features"


@dataclass
class FeatureCache:
    """Fixed image features of a training split, and which row holds each sample's image.

    arrays: field name -> N x ... float32 (N distinct images, memory-mapped), one per tensor of the features
    fixed: the features' other fields (grid, input_shape, valid_shape), the same for every image
    kind: the model's image-features class
    rows: the row of sample i's image, for every sample of the split
    """

    arrays: dict[str, np.ndarray]
    fixed: dict[str, tuple]
    kind: type[ImageFeatures]
    rows: list[int]

    def features(self, rows: torch.Tensor, *, device: torch.device, dtype: torch.dtype) -> ImageFeatures:
        """The cached features of a batch of rows (B), as the model's ``encode_images`` would return them."""
        index = rows.numpy()
        tensors = {
            name: torch.from_numpy(np.ascontiguousarray(array[index])).to(device=device, dtype=dtype)  # B x ...
            for name, array in self.arrays.items()
        }
        return self.kind(**tensors, **self.fixed)


def image_feature_cache(
    model: PairwiseSegmenter,
    reader: ReferringDataset,
    *,
    size: int,
    out_dir: Path,
    batch_size: int,
    autocast: bool = False,
    progress: bool = True,
) -> FeatureCache:
    """The feature cache of ``reader``'s images at ``size`` x ``size``: reused from ``out_dir`` when its
    fingerprint matches, else computed (one ``encode_images`` per distinct image) and written atomically."""
    paths = [str(r.image) for r in reader.records]
    distinct = list(dict.fromkeys(paths))  # first-seen order
    row_of = {p: i for i, p in enumerate(distinct)}
    fingerprint = _fingerprint(model, size=size, images=distinct)
    folder = out_dir / CACHE_DIR
    meta = _meta_if_matching(folder, fingerprint) or _write(
        model,
        distinct,
        size=size,
        folder=folder,
        fingerprint=fingerprint,
        batch_size=batch_size,
        autocast=autocast,
        progress=progress,
    )
    module, _, name = meta["kind"].partition(":")
    return FeatureCache(
        arrays={field: np.load(folder / f"{field}.npy", mmap_mode="r") for field in meta["arrays"]},
        fixed={field: tuple(value) for field, value in meta["fixed"].items()},
        kind=getattr(importlib.import_module(module), name),
        rows=[row_of[p] for p in paths],
    )


def _fingerprint(model: PairwiseSegmenter, *, size: int, images: list[str]) -> str:
    """A digest of what the features depend on: the image encoders' weights, the input size, the images."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"size": size, "images": images}).encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(model.trainable_set.image_encoders):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _meta_if_matching(folder: Path, fingerprint: str) -> dict | None:
    """The cache's metadata when a cache with this fingerprint is there, else None."""
    path = folder / "meta.json"
    meta = json.loads(path.read_text()) if path.exists() else {}
    return meta if meta.get("fingerprint") == fingerprint else None


@torch.no_grad()
def _write(
    model: PairwiseSegmenter,
    images: list[str],
    *,
    size: int,
    folder: Path,
    fingerprint: str,
    batch_size: int,
    autocast: bool,
    progress: bool,
) -> dict:
    """Encode ``images`` into a new cache at ``folder`` (replacing any old one); returns its metadata."""
    was_training = model.training
    model.eval()
    arrays: dict[str, np.ndarray] = {}
    meta: dict = {}
    try:
        (folder / "meta.json").unlink(missing_ok=True)  # no valid cache here until the new metadata is written
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(folder, err) from None
    try:
        with tqdm(total=len(images), desc="cache image features", unit="image", disable=not progress) as bar:
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                batch = torch.stack([image_to_tensor(read_rgb(Path(p)), (size, size)) for p in chunk])  # B x 3 x s x s
                with torch.autocast(device_type=model.device.type, dtype=torch.bfloat16, enabled=autocast):
                    feats = model.encode_images(batch)
                values = {f.name: getattr(feats, f.name) for f in dataclasses.fields(feats)}
                tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}  # each B x ...
                if not arrays:  # shapes are known after the first batch
                    shapes = {k: (len(images), *v.shape[1:]) for k, v in tensors.items()}  # N x ...
                    arrays = {k: _open_array(folder / f"{k}.npy", shape) for k, shape in shapes.items()}
                    kind = type(feats)
                    meta = {
                        "kind": f"{kind.__module__}:{kind.__qualname__}",
                        "arrays": list(tensors),
                        "fixed": {k: v for k, v in values.items() if k not in tensors},
                    }
                for name, tensor in tensors.items():
                    arrays[name][start : start + len(chunk)] = tensor.float().cpu().numpy()
                bar.update(len(chunk))
        for array in arrays.values():
            array.flush()
    finally:
        arrays.clear()
        model.train(was_training)
    meta.update(fingerprint=fingerprint, images=len(images))
    write_text_atomic(folder / "meta.json", json.dumps(meta))
    return meta


def _open_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A new float32 ``.npy`` file of ``shape``, memory-mapped for writing."""
    try:
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    except OSError as err:
        raise output_error(path, err) from None

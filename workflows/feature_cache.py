"""Image features computed once, for training with both image encoders frozen (``data.cache_image_features``).

When neither image encoder trains, each training image's SAM embedding and SigLIP tokens are the same at every
step. Computing them once and reading them back leaves a step only the text encoder, prompter and mask decoder:
for the ``demo`` model on CPU that is about 15x less work per sample. The cache is two float32 ``.npy``
arrays (exactly what the encoders return; float16 would flush tiny activations to zero), one row per distinct
image, in OUT_DIR/image_features/, opened memory-mapped. It is written under a temporary name and renamed, and
reused (by ``--resume`` or a rerun) only when its fingerprint still matches: the image encoders' weights, the
image size and the list of images.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rsrs.model.lora import IMAGE_ENCODERS
from rsrs.model.outputs import ImageFeatures
from rsrs.model.rsrefseg import RSRefSeg
from rsrs.pipeline.datasets.base import ReferringDataset, read_rgb
from rsrs.workflows.scoring import image_to_tensor

CACHE_DIR = "image_features"


@dataclass
class FeatureCache:
    """Fixed image features of a training split, and which row holds each sample's image.

    sam: N x D x Hs x Ws float32; siglip: N x T x C float32 (N distinct images, memory-mapped)
    rows: the row of sample i's image, for every sample of the split
    """

    sam: np.ndarray
    siglip: np.ndarray
    rows: list[int]
    grid: tuple[int, int]
    input_shape: tuple[int, int]
    valid_shape: tuple[int, int]

    def features(self, rows: torch.Tensor, *, device: torch.device, dtype: torch.dtype) -> ImageFeatures:
        """The cached features of a batch of rows (B), as the model's ``encode_images`` would return them."""
        index = rows.numpy()

        def gather(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array[index])).to(device=device, dtype=dtype)

        return ImageFeatures(
            sam=gather(self.sam),  # B x D x Hs x Ws
            siglip=gather(self.siglip),  # B x T x C
            grid=self.grid,
            input_shape=self.input_shape,
            valid_shape=self.valid_shape,
        )


def image_feature_cache(
    model: RSRefSeg,
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
    rows = [row_of[p] for p in paths]
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
    return FeatureCache(
        sam=np.load(folder / "sam.npy", mmap_mode="r"),
        siglip=np.load(folder / "siglip.npy", mmap_mode="r"),
        rows=rows,
        grid=tuple(meta["grid"]),
        input_shape=tuple(meta["input_shape"]),
        valid_shape=tuple(meta["valid_shape"]),
    )


def _fingerprint(model: RSRefSeg, *, size: int, images: list[str]) -> str:
    """A digest of what the features depend on: the image encoders' weights, the input size, the images."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"size": size, "images": images}).encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(IMAGE_ENCODERS):
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
    model: RSRefSeg,
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
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    was_training = model.training
    model.eval()
    sam = siglip = None
    meta: dict = {}
    try:
        with tqdm(total=len(images), desc="cache image features", unit="image", disable=not progress) as bar:
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                batch = torch.stack([image_to_tensor(read_rgb(Path(p)), (size, size)) for p in chunk])  # B x 3 x s x s
                with torch.autocast(device_type=model.device.type, dtype=torch.bfloat16, enabled=autocast):
                    feats = model.encode_images(batch)
                if sam is None:  # shapes are known after the first batch
                    sam = _open_array(tmp / "sam.npy", (len(images), *feats.sam.shape[1:]))
                    siglip = _open_array(tmp / "siglip.npy", (len(images), *feats.siglip.shape[1:]))
                    meta = {"grid": feats.grid, "input_shape": feats.input_shape, "valid_shape": feats.valid_shape}
                sam[start : start + len(chunk)] = feats.sam.float().cpu().numpy()
                siglip[start : start + len(chunk)] = feats.siglip.float().cpu().numpy()
                bar.update(len(chunk))
        sam.flush()
        siglip.flush()
        del sam, siglip
        meta.update(fingerprint=fingerprint, images=len(images))
        (tmp / "meta.json").write_text(json.dumps(meta))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    finally:
        model.train(was_training)
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _open_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)

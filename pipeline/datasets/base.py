"""The one sample type every referring dataset yields, the lazy reader around it, and their errors.

Readers index a split cheaply (file names and sentences) and load pixels only in ``__getitem__``, so a reader
can be handed to DataLoader worker processes and opened over datasets far larger than memory.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

from rsrs.core.errors import InputDataError, RsrsError


class DatasetNotFoundError(RsrsError, FileNotFoundError):
    """A dataset folder or one of its index files is missing."""


class DatasetFormatError(InputDataError):
    """A dataset's format name, index files or split do not hold what the format promises."""


@dataclass(frozen=True)
class ReferringSample:
    """One (image, mask, sentence): image H x W x 3 uint8, mask H x W bool on the same pixels, and metadata.

    ``metadata`` always holds ``id`` (unique within the split) and ``category`` (None when unknown).
    """

    image: np.ndarray
    mask: np.ndarray
    sentence: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The sample's id within its dataset split."""
        return str(self.metadata["id"])

    @property
    def category(self) -> str | None:
        """The target's category name, when the dataset knows it."""
        return self.metadata.get("category")


@dataclass(frozen=True)
class SampleRecord:
    """What a reader keeps per sample before loading: where the pixels are and the sentence."""

    image: Path
    mask: Callable[[tuple[int, int]], np.ndarray]  # image (ny, nx) -> mask (ny, nx) bool
    sentence: str
    metadata: dict[str, Any]


class ReferringDataset(Sequence):
    """A split of a referring dataset: ``len`` and ``reader[i] -> ReferringSample``, pixels loaded on access."""

    def __init__(self, records: Sequence[SampleRecord], *, name: str) -> None:
        self.records = list(records)
        self.name = name

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> ReferringSample:  # type: ignore[override]
        r = self.records[index]
        image = read_rgb(r.image)
        mask = r.mask(image.shape[:2])
        return ReferringSample(image=image, mask=mask, sentence=r.sentence, metadata=dict(r.metadata))

    def __repr__(self) -> str:
        return f"ReferringDataset({self.name!r}, {len(self)} samples)"


def require(path: Path, what: str) -> Path:
    """``path`` if it exists, else a :class:`DatasetNotFoundError` naming ``what`` is expected there."""
    if not path.exists():
        raise DatasetNotFoundError(f"{what} not found at {path}; check the dataset path and its layout")
    return path


def read_rgb(path: Path) -> np.ndarray:
    """H x W x 3 uint8 pixels of a PNG/JPEG (Pillow) or GeoTIFF (rasterio; first three bands)."""
    require(path, "image")
    if path.suffix.lower() in (".tif", ".tiff"):
        with warnings.catch_warnings(category=NotGeoreferencedWarning, action="ignore"), rasterio.open(path) as src:
            bands = src.read(indexes=list(range(1, min(3, src.count) + 1)))  # (b, H, W)
        if bands.shape[0] < 3:
            bands = np.repeat(bands[:1], 3, axis=0)
        if bands.dtype != np.uint8:
            raise DatasetFormatError(f"image {path} is {bands.dtype}; referring datasets are 8-bit RGB")
        return np.ascontiguousarray(bands.transpose(1, 2, 0))
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))  # writable copy: torch.from_numpy needs one


def fit_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 2-D label array as bool of ``shape`` (nearest neighbour when a mask is off by a pixel or two)."""
    mask = np.asarray(mask) > 0
    if mask.shape != tuple(shape):
        ny, nx = shape
        mask = np.asarray(Image.fromarray(mask).resize((nx, ny), Image.Resampling.NEAREST))
    return mask


def read_mask_file(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A mask image (PNG or TIFF, any value > 0 is the target) as (ny, nx) bool fitted to ``shape``."""
    require(path, "mask")
    if path.suffix.lower() in (".tif", ".tiff"):
        with warnings.catch_warnings(category=NotGeoreferencedWarning, action="ignore"), rasterio.open(path) as src:
            values = src.read(1)  # chip datasets ship plain, ungeoreferenced TIFFs
    else:
        with Image.open(path) as im:
            values = np.asarray(im)
        if values.ndim == 3:  # RGB(A) masks: any channel lit
            values = values[..., :3].max(axis=2)
    return fit_mask(values, shape)


def read_phrases(path: Path) -> list[tuple[str, str]]:
    """``(id, sentence)`` pairs of a RefSegRS/RISBench phrase file: one "<id> <sentence>" per line."""
    pairs = []
    for n, line in enumerate(require(path, "phrase file").read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise DatasetFormatError(f"{path}:{n}: expected '<id> <sentence>', got {line.strip()!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def unique_ids(ids: Sequence[str]) -> list[str]:
    """Ids made unique within a split: repeats of ``x`` become ``x#1``, ``x#2``... (several sentences per image)."""
    seen: dict[str, int] = {}
    out = []
    for i in ids:
        k = seen.get(i, 0)
        seen[i] = k + 1
        out.append(i if k == 0 else f"{i}#{k}")
    return out

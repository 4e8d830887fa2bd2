"""Training batches from a referring dataset: fixed-size tensors, and a resumable, rank-sharded sample order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from rsrs.workflows.evaluate import image_to_tensor


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """Mask H x W bool -> size x size float (nearest)."""
    m = torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None]  # 1 x 1 x H x W
    if m.shape[-2:] != (size, size):
        m = F.interpolate(m, size=(size, size), mode="nearest")
    return m[0, 0]


class ReferringBatches(Dataset):
    """A dataset reader (len + getitem of samples with image, mask, sentence) as fixed-size training tensors.

    Item ``i`` is (image 3 x size x size uint8, mask size x size float, sentence). With ``image_rows`` (the
    row of each sample's image in a feature cache) the first element is that row instead of the pixels.
    """

    def __init__(self, reader: Sequence, *, size: int, image_rows: Sequence[int] | None = None) -> None:
        self.reader = reader
        self.size = size
        self.image_rows = image_rows

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | int, torch.Tensor, str]:
        sample = self.reader[index]
        mask = resize_mask(sample.mask, self.size)
        if self.image_rows is not None:
            return self.image_rows[index], mask, sample.sentence
        return image_to_tensor(sample.image, (self.size, self.size)), mask, sample.sentence


class ResumableSampler(Sampler[int]):
    """A seeded shuffle per epoch, split across ``world`` ranks, that can start part-way through an epoch.

    The order depends only on (seed, epoch), so a resumed run that knows its epoch and how many samples it has
    consumed continues exactly where an uninterrupted run would be.
    """

    def __init__(self, n: int, *, seed: int, epoch: int = 0, start: int = 0, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.epoch, self.start, self.rank, self.world = n, seed, epoch, start, rank, world

    def order(self) -> list[int]:
        """This rank's indices for the current epoch (each rank gets the same count)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        per_rank = -(-self.n // self.world)
        perm = (perm * 2)[: per_rank * self.world]  # pad by wrapping so every rank has per_rank indices
        return perm[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :])

    def __len__(self) -> int:
        return len(self.order()) - self.start

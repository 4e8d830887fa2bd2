"""Training batches from a referring dataset: fixed-size tensors, and a resumable, rank-sharded sample order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from rsrs.workflows.evaluate import image_to_tensor


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image H x W x 3 uint8 and mask H x W bool -> 3 x size x size uint8 and size x size float (nearest)."""
    m = torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None]  # 1 x 1 x H x W
    if m.shape[-2:] != (size, size):
        m = F.interpolate(m, size=(size, size), mode="nearest")
    return image_to_tensor(image, (size, size)), m[0, 0]


class ReferringBatches(Dataset):
    """A dataset reader (len + getitem of samples with image, mask, sentence) as fixed-size training tensors."""

    def __init__(self, reader: Sequence, *, size: int) -> None:
        self.reader = reader
        self.size = size

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        sample = self.reader[index]
        image, mask = resize_pair(sample.image, sample.mask, self.size)
        return image, mask, sample.sentence


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

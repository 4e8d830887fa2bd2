"""Training data: the splits of a referring dataset as fixed-size tensors (or rows of an image feature cache), in a
resumable, rank-sharded order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from rsrs.core.errors import ConfigError
from rsrs.model.lora import image_encoders_frozen
from rsrs.pipeline.datasets import ReferringDataset, open_dataset
from rsrs.workflows.feature_cache import FeatureCache, image_feature_cache
from rsrs.workflows.scoring import image_to_tensor
from rsrs.workflows.train_config import TrainConfig
from rsrs.workflows.train_distributed import Distributed
from rsrs.workflows.train_state import Progress


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


@dataclass
class TrainingData:
    """The training split as batches (of images, or of feature-cache rows), the validation split, and the cache."""

    train: ReferringBatches
    val: ReferringDataset | None
    cache: FeatureCache | None
    config: TrainConfig

    def images(self, inputs: torch.Tensor, *, device: torch.device, dtype: torch.dtype):
        """A batch's model input: its pixels on the device, or its cached image features."""
        if self.cache is not None:
            return self.cache.features(inputs, device=device, dtype=dtype)
        return inputs.to(device)

    def epoch(self, state: Progress, ddp: Distributed) -> DataLoader:
        """This rank's batches for the current epoch, from where ``state`` stands in it."""
        sampler = ResumableSampler(
            len(self.train),
            seed=self.config.seed,
            epoch=state.epoch,
            start=state.epoch_position,
            rank=ddp.rank,
            world=ddp.world,
        )
        return DataLoader(
            self.train,
            batch_size=self.config.optim.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.config.data.num_workers,
            persistent_workers=False,
        )


def open_training_data(
    config: TrainConfig, model: torch.nn.Module, ddp: Distributed, *, autocast: bool
) -> TrainingData:
    """The config's splits, with the training images' features cached first when ``data.cache_image_features``."""
    data = config.data
    train_reader = open_dataset(data.format, data.path, data.train_split)
    cache = _feature_cache(model, train_reader, config, ddp, autocast=autocast) if data.cache_image_features else None
    train = ReferringBatches(train_reader, size=data.image_size, image_rows=cache.rows if cache is not None else None)
    if len(train) < config.optim.batch_size * ddp.world:
        raise ConfigError(
            f"training split '{data.train_split}' has {len(train)} samples, fewer than one batch "
            f"({config.optim.batch_size} x {ddp.world} processes); lower optim.batch_size"
        )
    val = open_dataset(data.format, data.path, data.val_split) if data.val_split else None
    return TrainingData(train=train, val=val, cache=cache, config=config)


def _feature_cache(model, reader, config: TrainConfig, ddp: Distributed, *, autocast: bool) -> FeatureCache:
    """The training split's image features, computed once by rank 0 (the other ranks then open its files)."""
    if not image_encoders_frozen(model):
        raise ConfigError(
            "data.cache_image_features needs both image encoders frozen, but this model trains them; "
            "set model.trainable: all_but_image_encoders"
        )
    build = partial(
        image_feature_cache,
        model,
        reader,
        size=config.data.image_size,
        out_dir=Path(config.out_dir),
        batch_size=config.optim.batch_size,
        autocast=autocast,
    )
    cache = build(progress=True) if ddp.is_main else None
    ddp.barrier()
    return cache if cache is not None else build(progress=False)

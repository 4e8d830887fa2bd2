import os

import pytest
import torch

if not torch.cuda.is_available():  # the 'triton' SAM attention kernel then runs in Triton's interpreter on CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")  # tensors; read when its module defines the kernel

from rsrs.model import load_model


@pytest.fixture(scope="session")
def tiny():
    """The tiny preset on CPU (seeded random init), shared read-only across tests."""
    return load_model("tiny", device="cpu")


def random_tiles(seed: int, *, batch: int = 2, height: int = 96, width: int = 128) -> torch.Tensor:
    """Seeded uint8 tiles B x 3 x H x W."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=g)

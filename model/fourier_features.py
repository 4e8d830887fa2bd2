"""SAM's and SAM 2's random-Fourier positional encodings, computed in float32 whatever the model's dtype.

The mask decoder is told where each image-embedding cell lies by sin/cos(2 pi (2c - 1) @ G), coordinates c in
[0, 1]^2 and a 2 x 128 Gaussian matrix G: arguments of tens of radians. bf16 holds such an argument to 0.125-0.25
rad, so a bf16 model's encoding is wrong by up to 2.0 in places (a sign); bf16 autocast in training rounds the
matmul the same way. The demo model in bf16 on a real image (CPU, benchmarks/results/fourier_precision_cpu.json):
masks 99.32% equal to float32's (mean logit error 1.34) with the encodings in bf16, 99.94% (0.15) in float32.

So :func:`cast_keeping_fourier_float32` casts a model but leaves G in float32, and the models compute the
encodings through :func:`image_wide_fourier_encoding` / :func:`fourier_encoding`, outside autocast, casting the
result (values in [-1, 1]) to the activations' dtype afterwards.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from transformers.models.sam.modeling_sam import SamPositionalEmbedding
from transformers.models.sam2.modeling_sam2 import Sam2PositionalEmbedding

FOURIER_ENCODINGS = (SamPositionalEmbedding, Sam2PositionalEmbedding)


def cast_keeping_fourier_float32(model: nn.Module, *, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """``model.to(device, dtype)`` in place (and returned), its Fourier matrices G kept in float32 as loaded."""
    matrices = {m: m.positional_embedding.detach().float() for m in model.modules() if isinstance(m, FOURIER_ENCODINGS)}
    model.to(device=device, dtype=dtype)
    for module, matrix in matrices.items():
        module.positional_embedding.data = matrix.to(device)  # a Parameter in SAM, a buffer in SAM 2: both kept
    return model


def fourier_encoding(encoding: nn.Module, coordinates: torch.Tensor) -> torch.Tensor:
    """``encoding(coordinates)`` in G's dtype (float32 in a model cast by :func:`cast_keeping_fourier_float32`),
    outside autocast.

    coordinates: ... x 2 in [0, 1] (x, y)  ->  ... x D
    """
    with _without_autocast(encoding.positional_embedding.device):
        return encoding(coordinates)  # transformers casts the coordinates to G's dtype


def image_wide_fourier_encoding(sam: nn.Module) -> torch.Tensor:
    """``sam.get_image_wide_positional_embeddings()`` (transformers' SAM or SAM 2) in G's dtype, outside autocast:
    1 x D x Hs x Ws, one encoding per image-embedding cell."""
    with _without_autocast(sam.shared_image_embedding.positional_embedding.device):
        return sam.get_image_wide_positional_embeddings()


def _without_autocast(device: torch.device) -> AbstractContextManager:
    """Autocast off on ``device``'s type (nothing to turn off where autocast does not exist, as on 'meta')."""
    return torch.autocast(device.type, enabled=False) if torch.amp.is_autocast_available(device.type) else nullcontext()

"""Typed outputs of RSRefSeg 2's stages: the common protocol's dataclasses plus what SAM 2 and the loss need."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rsrs.model.outputs import ImageFeatures, MaskOutput


@dataclass
class Sam2ImageFeatures(ImageFeatures):
    """Per-tile features of RSRefSeg 2, computed once per tile whatever the number of queries.

    sam: B x D x Hs x Ws         SAM 2's lowest-resolution FPN map plus its no-memory embedding (256 x 64 x 64)
    siglip: B x N x C            SigLIP2 patch tokens (N = 32*32 = 1024, C = 1152 for so400m/16 at 512)
    sam_s0: B x D/8 x 4Hs x 4Ws  highest-resolution FPN map through the mask decoder's conv_s0 (32 x 256 x 256)
    sam_s1: B x D/4 x 2Hs x 2Ws  middle FPN map through the mask decoder's conv_s1 (64 x 128 x 128)
    grid, input_shape, valid_shape: as in :class:`ImageFeatures`
    """

    sam_s0: torch.Tensor
    sam_s1: torch.Tensor


@dataclass
class RSRefSeg2Output(MaskOutput):
    """``forward``'s output: the masks plus what the training loss needs.

    logits: B x 1 x H x W; activation: B x 1 x m x m (the dense prompt logits on SAM 2's mask-input grid)
    queries1, queries2: B x n x C   the two text query sets after the two-query blocks
    patches: B x N x C              SigLIP2 patch tokens (pooled under the mask for the contrastive term)
    grid: (ny, nx)                  patch grid, N = ny * nx
    contrastive_scale, contrastive_bias: 0-d tensors, exp(logit_scale2) and logit_bias2 of the contrastive head,
        taken inside ``forward`` so that DistributedDataParallel counts those parameters as used there
    """

    queries1: torch.Tensor
    queries2: torch.Tensor
    patches: torch.Tensor
    grid: tuple[int, int]
    contrastive_scale: torch.Tensor
    contrastive_bias: torch.Tensor

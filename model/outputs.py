"""Typed outputs of the model's stages (STYLE rule 6): what each stage hands to the next."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageFeatures:
    """Per-tile features, computed once per tile whatever the number of queries.

    sam: B x D x Hs x Ws  SAM image embedding (D=256, 64x64 for a 1024 input)
    siglip: B x N x C     SigLIP patch tokens (N = 27*27 = 729, C = 1152 for so400m), no pooling
    grid: (ny, nx)        SigLIP patch grid, N = ny * nx
    input_shape: (H, W)   size of the tiles the features came from; masks are returned at this size
    valid_shape: (h, w)   region of SAM's square input that holds the tile (the rest is padding)
    """

    sam: torch.Tensor
    siglip: torch.Tensor
    grid: tuple[int, int]
    input_shape: tuple[int, int]
    valid_shape: tuple[int, int]

    def __len__(self) -> int:
        return self.sam.shape[0]


@dataclass
class TextFeatures:
    """Per-query features, computed once per job.

    tokens: Q x L x C   SigLIP text token states (local features)
    valid: Q x L        True for real tokens, False for padding
    pooled: Q x C       SigLIP pooled text feature (global feature)
    texts: the Q query strings
    """

    tokens: torch.Tensor
    valid: torch.Tensor
    pooled: torch.Tensor
    texts: list[str]

    def __len__(self) -> int:
        return self.pooled.shape[0]


@dataclass
class PromptOutput:
    """AttnPrompter output for P (image, query) pairs.

    sparse: P x 49 x D       sparse prompt tokens for SAM's mask decoder
    activation: P x ny x nx  global activation logits (SigLIP logit of each patch vs. the pooled text)
    """

    sparse: torch.Tensor
    activation: torch.Tensor


@dataclass
class MaskOutput:
    """Decoded masks.

    logits: B x Q x H x W      mask logits at the input size (sigmoid -> probability)
    activation: B x Q x ny x nx  the prompter's global activation logits (for inspection)
    """

    logits: torch.Tensor
    activation: torch.Tensor

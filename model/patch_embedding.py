"""Patch-embedding convolutions (kernel = stride > 1, no padding) computed as one matmul over the patches.

SAM ViT and SigLIP embed an image by a convolution whose kernel equals its stride: each output token is a linear
map of one non-overlapping patch. cuDNN runs that shape on a generic implicit-GEMM kernel: on an H200, 8.5 ms for
32 images at SAM ViT-B's 1024 px against 0.8 ms for the same sums as one matmul (0.45 compiled), and 1.1 against
0.33 ms for SigLIP's 384 px (benchmarks/results/sam_attention.json). Here the patches are laid side by side and
multiplied by the flattened kernel, which is the convolution's arithmetic in another order.

Applied after construction (STYLE rule 4): each such convolution's ``forward`` is replaced on the instance; its
``weight`` and ``bias`` (and their names) stay as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rsrs.model.instance_forward import bind_forward, runs_forward


def patch_convolutions_as_matmuls(module: nn.Module) -> int:
    """Give every patch-embedding convolution in ``module`` the matmul forward; returns how many it changed."""
    return bind_forward([m for m in module.modules() if is_patch_convolution(m)], patch_matmul_forward)


def is_patch_convolution(module: nn.Module) -> bool:
    """Whether ``module`` is a 2-D convolution over non-overlapping patches: kernel = stride > 1, no padding.

    1 x 1 convolutions (SAM's neck, LoRA adapters) are left to cuDNN: they are matmuls to it already."""
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == module.stride
        and module.kernel_size != (1, 1)
        and module.padding in ((0, 0), "valid")
        and module.dilation == (1, 1)
        and module.groups == 1
    )


def patch_matmul_forward(self: nn.Conv2d, pixels: torch.Tensor) -> torch.Tensor:
    """``Conv2d.forward`` of a patch convolution as one matmul (bound by :func:`patch_convolutions_as_matmuls`).

    pixels: B x C x H x W -> B x out x H//ph x W//pw, as the convolution, which drops the rows and columns that
    do not fill a patch; the result is a channels-last view.
    """
    B, C, H, W = pixels.shape
    ph, pw = self.kernel_size
    gy, gx = H // ph, W // pw
    patches = pixels[..., : gy * ph, : gx * pw].reshape(B, C, gy, ph, gx, pw)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(B, gy, gx, C * ph * pw)  # the kernel's (C, ph, pw) order
    tokens = F.linear(patches, self.weight.reshape(self.out_channels, -1), self.bias)  # B x gy x gx x out
    return tokens.permute(0, 3, 1, 2)


def is_patch_matmul(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution running :func:`patch_matmul_forward`."""
    return runs_forward(module, patch_matmul_forward)

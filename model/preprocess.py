"""Pixel preprocessing for the two image encoders, done in torch so it runs batched on the model's device."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# SAM's ImageNet statistics, for pixels in [0, 1].
SAM_MEAN = (0.485, 0.456, 0.406)
SAM_STD = (0.229, 0.224, 0.225)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """Images B x 3 x H x W, uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 1]."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be B x 3 x H x W, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float()


def resize_longest(images: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Longest side resized to ``size`` (bilinear, antialiased), aspect kept.

    images: B x 3 x H x W float  ->  (B x 3 x h x w, (h, w)) with max(h, w) = size
    """
    B, _, H, W = images.shape
    scale = size / max(H, W)
    h, w = round(H * scale), round(W * scale)
    x = images if (h, w) == (H, W) else F.interpolate(images, size=(h, w), mode="bilinear", antialias=True)
    return x, (h, w)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel; images: B x 3 x H x W.

    Per channel with Python scalars: a tensor of the statistics would be a blocking copy to the GPU per call.
    """
    return torch.cat([(images[:, c : c + 1] - m) / s for c, (m, s) in enumerate(zip(mean, std, strict=True))], dim=1)


def sam_pixels(images: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """SAM input: longest side resized to ``size``, normalised, zero-padded bottom/right to a square.

    images: B x 3 x H x W float in [0, 1] -> (B x 3 x size x size, (h, w) of the resized image inside it)
    """
    x, (h, w) = resize_longest(images, size)
    return F.pad(normalize(x, SAM_MEAN, SAM_STD), (0, size - w, 0, size - h)), (h, w)


def siglip_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """SigLIP input: resized to ``size`` x ``size`` and scaled to [-1, 1].

    images: B x 3 x H x W float in [0, 1] -> B x 3 x size x size
    """
    H, W = images.shape[-2:]
    x = images if (H, W) == (size, size) else F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    return (x - 0.5) / 0.5


def sam_logits_to_input(
    low_res: torch.Tensor, *, sam_size: int, valid_shape: tuple[int, int], input_shape: tuple[int, int]
) -> torch.Tensor:
    """SAM's low-res mask logits back onto the caller's pixels (undo the resize and the padding).

    low_res: P x h' x w' (256 x 256 for SAM) -> P x H x W
    """
    h, w = valid_shape
    x = low_res[:, None]
    if (h, w) != (sam_size, sam_size):  # crop the padding in SAM's input frame first
        x = F.interpolate(x, size=(sam_size, sam_size), mode="bilinear", align_corners=False)[..., :h, :w]
    return F.interpolate(x, size=input_shape, mode="bilinear", align_corners=False)[:, 0]

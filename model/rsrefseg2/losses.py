"""RSRefSeg 2's training objective, as the official ``PseudoSegHead`` computes it with the official configuration.

``total = 5 * BCE + 5 * Dice + 0.5 * query_similarity + 0.5 * contrastive`` where

- BCE (mean over pixels) and Dice (mmseg's V-Net form, eps 1e-3) are on the mask logits at the masks' size;
- ``query_similarity`` is the mean over samples of the squared cosine between the two query sets' means (pushing
  the two sets apart);
- ``contrastive`` is the symmetric InfoNCE between each sample's SigLIP2 patch map pooled under its mask (mask
  bilinearly resized to the patch grid, corners aligned, > 0.5; map times mask averaged over the grid) and the
  mean of its query set 2, both L2-normalised, with a learnable temperature and bias. Under torch.distributed the
  features of every rank are gathered, so each rank scores the whole global batch; as in the official code, the
  other ranks' features come without gradient and this rank's keep theirs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from rsrs.model.losses import LossOutput, dice_loss
from rsrs.model.rsrefseg2.outputs import RSRefSeg2Output


def query_similarity_loss(queries1: torch.Tensor, queries2: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine between the two query sets' means; queries1, queries2: B x n x C."""
    a = F.normalize(queries1.float().mean(dim=1), dim=1)
    b = F.normalize(queries2.float().mean(dim=1), dim=1)
    return (F.cosine_similarity(a, b, dim=1) ** 2).mean()


def mask_pooled_features(patches: torch.Tensor, masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The patch map averaged over the grid after zeroing what lies outside the mask.

    patches: B x N x C (N = ny*nx); masks: B x H x W in {0, 1}, in the tile's frame  ->  B x C.
    The patch grid covers the tile padded bottom/right to a square, so the mask is padded the same way first.
    """
    B, N, C = patches.shape
    H, W = masks.shape[-2:]
    side = max(H, W)
    square = F.pad(masks.float(), (0, side - W, 0, side - H))[:, None]  # B x 1 x side x side
    inside = (F.interpolate(square, size=grid, mode="bilinear", align_corners=True) > 0.5).float()  # B x 1 x ny x nx
    fmap = patches.float().transpose(1, 2).reshape(B, C, *grid)  # B x C x ny x nx
    return (fmap * inside).mean(dim=(2, 3))


def gather_across_ranks(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B x ...) of every rank, concatenated in rank order; the gradient flows through this rank's part only.

    Without an initialised process group (or with one process) returns ``x``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def contrastive_loss(
    image: torch.Tensor, text: torch.Tensor, *, scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Symmetric cross-entropy of ``scale * cos(image_i, text_j) + bias`` against the matching pairs (i = j).

    image, text: B x C (this rank's samples; gathered across ranks here); scale, bias: 0-d tensors
    """
    image = gather_across_ranks(F.normalize(image.float(), dim=1))  # N x C, N = world * B
    text = gather_across_ranks(F.normalize(text.float(), dim=1))
    logits = scale * image @ text.T + bias  # N x N, row i: image i against every text
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def rsrefseg2_loss(
    output: RSRefSeg2Output,
    masks: torch.Tensor,
    *,
    bce_weight: float = 5.0,
    dice_weight: float = 5.0,
    query_weight: float = 0.5,
    contrastive_weight: float = 0.5,
) -> LossOutput:
    """The weighted objective and its unweighted terms ``bce``, ``dice``, ``query_similarity``, ``contrastive``.

    output: ``RSRefSeg2.forward``'s (logits B x 1 x H x W); masks: B x H x W in {0, 1}
    """
    logits = output.logits[:, 0].float()
    target = masks.float()
    terms = {
        "bce": F.binary_cross_entropy_with_logits(logits, target),
        "dice": dice_loss(logits, target, eps=1e-3, squared=True),
        "query_similarity": query_similarity_loss(output.queries1, output.queries2),
        "contrastive": contrastive_loss(
            mask_pooled_features(output.patches, target, output.grid),
            output.queries2.float().mean(dim=1),
            scale=output.contrastive_scale.float(),
            bias=output.contrastive_bias.float(),
        ),
    }
    weights = {"bce": bce_weight, "dice": dice_weight, "query_similarity": query_weight,
               "contrastive": contrastive_weight}  # fmt: skip
    total = sum(weights[name] * term for name, term in terms.items())
    return LossOutput(total=total, terms=terms)

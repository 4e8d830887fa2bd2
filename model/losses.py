"""Training losses: weighted BCE + Dice on full-resolution mask logits (reference weights 5 and 5), and the
:class:`LossOutput` every architecture's ``loss`` returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossOutput:
    """The weighted total (to backpropagate) and its unweighted terms by name (for logging)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


def dice_loss(logits: torch.Tensor, target: torch.Tensor, *, eps: float = 1.0, squared: bool = False) -> torch.Tensor:
    """Soft Dice loss averaged over samples; logits and target B x H x W (target in {0, 1}).

    ``squared=False``: ``1 - (2|pt| + eps) / (|p| + |t| + eps)``; ``squared=True``, the V-Net form (mmseg's
    DiceLoss, which RSRefSeg 2 trains with, eps 1e-3): ``1 - 2|pt| / (|p^2| + eps + |t^2| + eps)``.
    """
    prob = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    inter = (prob * target).sum(-1)
    if squared:
        return (1 - 2 * inter / ((prob * prob).sum(-1) + (target * target).sum(-1) + 2 * eps)).mean()
    return (1 - (2 * inter + eps) / (prob.sum(-1) + target.sum(-1) + eps)).mean()


def bce_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, *, bce_weight: float = 5.0, dice_weight: float = 5.0
) -> LossOutput:
    """``bce_weight * BCE + dice_weight * Dice``; logits and target B x H x W at the mask's resolution."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    dice = dice_loss(logits, target)
    return LossOutput(total=bce_weight * bce + dice_weight * dice, terms={"bce": bce, "dice": dice})

import math

import torch

from rsrs.model.losses import bce_dice_loss, dice_loss


def test_dice_loss_matches_hand_computation():
    logits = torch.tensor([[[0.0, 100.0], [-100.0, 100.0]]])  # probabilities 0.5, 1, 0, 1
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    inter, psum, tsum = 0.5 + 1.0, 0.5 + 1 + 0 + 1, 2.0
    expected = 1 - (2 * inter + 1) / (psum + tsum + 1)
    torch.testing.assert_close(dice_loss(logits, target), torch.tensor(expected))


def test_bce_dice_weights_the_two_parts():
    logits = torch.tensor([[[0.0, 0.0]]])
    target = torch.tensor([[[1.0, 0.0]]])
    out = bce_dice_loss(logits, target, bce_weight=2.0, dice_weight=3.0)
    torch.testing.assert_close(out.terms["bce"], torch.tensor(math.log(2)))
    torch.testing.assert_close(out.total, 2.0 * out.terms["bce"] + 3.0 * out.terms["dice"])

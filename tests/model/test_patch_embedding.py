"""Patch-embedding convolutions as matmuls against the convolutions themselves (CPU, float32)."""

import copy

import pytest
import torch
from torch import nn

from rsrs.model.patch_embedding import is_patch_convolution, is_patch_matmul, patch_convolutions_as_matmuls


@pytest.mark.parametrize(
    ("size", "patch", "bias"),
    [((64, 64), 16, True), ((30, 44), 7, True), ((32, 32), (4, 8), False)],  # 30 x 44 / 7: rows and columns dropped
)
def test_patch_matmul_equals_the_convolution_with_its_gradients(size, patch, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 24, patch, stride=patch, bias=bias)
    fast = copy.deepcopy(conv)
    assert patch_convolutions_as_matmuls(fast) == 1 and is_patch_matmul(fast)
    pixels = torch.randn(2, 3, *size, requires_grad=True)
    expected, got = conv(pixels), fast(pixels)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected)
    expected.square().sum().backward()
    expected_grads = [pixels.grad.clone(), conv.weight.grad]
    pixels.grad = None
    got.square().sum().backward()
    torch.testing.assert_close([pixels.grad, fast.weight.grad], expected_grads, rtol=1e-4, atol=1e-4)  # sum order
    assert fast.state_dict().keys() == conv.state_dict().keys()


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 8, 3, stride=1, padding=1),  # overlapping
        nn.Conv2d(3, 8, 4, stride=4, padding=1),  # padded
        nn.Conv2d(4, 8, 4, stride=4, groups=2),  # grouped
        nn.Conv2d(3, 8, 1),  # 1 x 1: a matmul to cuDNN already
        nn.Conv2d(3, 8, 4, stride=4, dilation=2),
    ],
)
def test_other_convolutions_are_left_alone(conv):
    assert not is_patch_convolution(conv)
    assert patch_convolutions_as_matmuls(nn.Sequential(conv)) == 0 and not is_patch_matmul(conv)

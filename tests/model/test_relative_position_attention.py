"""The 'triton' SAM attention kernel: against float64 attention with relative positions, and inside a fused layer.

On a GPU where there is one; otherwise in Triton's interpreter on CPU tensors (tests/model/conftest.py sets
TRITON_INTERPRET). float32 throughout.
"""

import copy
import math

import pytest
import torch
from transformers.models.sam.modeling_sam import SamVisionSdpaAttention

from rsrs.model.fused_attention import fuse_sam_attention
from rsrs.model.relative_position_attention import attention_by_key_rows
from tests.model.test_fused_attention import tiny_sam_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference_attention(q, k, v, rel_h, rel_w, scale: float) -> torch.Tensor:
    """float64 softmax(scale q.k + rel_h[q, key row] + rel_w[q, key column]) v, keys row-major."""
    B, heads, N, _ = q.shape
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, heads, N, N).double()
    scores = scale * q.double() @ k.double().transpose(-1, -2) + bias
    return scores.softmax(-1) @ v.double()


@pytest.mark.parametrize(
    ("images", "heads", "rows", "columns", "d"),
    [(1, 2, 8, 16, 16), (2, 1, 5, 7, 32), (1, 3, 3, 20, 16)],  # columns past the block, queries past the last block
)
def test_kernel_equals_float64_attention_on_the_qkv_projections_strided_layout(images, heads, rows, columns, d):
    g = torch.Generator().manual_seed(rows)
    N = rows * columns
    qkv = torch.randn(images, N, 3, heads, d, generator=g).to(DEVICE).permute(2, 0, 3, 1, 4)  # as SAM's qkv leaves them
    q, k, v = qkv.unbind(0)
    rel_h = 2 * torch.randn(images, heads, N, rows, generator=g).to(DEVICE)
    rel_w = 2 * torch.randn(images, heads, N, columns, generator=g).to(DEVICE)
    out = attention_by_key_rows(q, k, v, rel_h, rel_w, 1 / math.sqrt(d))
    expected = reference_attention(q, k, v, rel_h, rel_w, 1 / math.sqrt(d))
    assert not torch.allclose(reference_attention(q, k, v, 0 * rel_h, 0 * rel_w, 1 / math.sqrt(d)), expected, atol=1e-2)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)
    assert out.transpose(1, 2).is_contiguous()  # token-major, as the output projection reads it


def test_fused_layer_runs_the_triton_kernel_for_inference_and_channels_for_training():
    layer = tiny_sam_attention(SamVisionSdpaAttention, window_size=0).to(DEVICE)
    fused = copy.deepcopy(layer)
    fuse_sam_attention(fused, kernel="triton")
    hidden = torch.randn(2, 16, 16, layer.qkv.in_features, generator=torch.Generator().manual_seed(7)).to(DEVICE)

    def ran_triton(fn) -> tuple[bool, torch.Tensor]:
        with torch.profiler.profile() as profile:
            out = fn()
        return any("rsrs::attention_by_key_rows" in event.name for event in profile.events()), out

    with torch.no_grad():
        ran, out = ran_triton(lambda: fused(hidden)[0])
        assert ran
        torch.testing.assert_close(out, layer(hidden)[0])
    ran, _ = ran_triton(lambda: fused(hidden)[0].sum().backward())
    assert not ran  # a gradient: the 'channels' kernel

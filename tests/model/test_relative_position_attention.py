"""The 'triton' SAM attention kernel: against float64 attention with relative positions, and inside a fused layer.

On a GPU where there is one; otherwise in Triton's interpreter on CPU tensors (tests/model/conftest.py sets
TRITON_INTERPRET). float32 throughout.
"""

import copy
import math
import os
import subprocess
import sys

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


#: Builds the kernel's Triton IR for an H200 (no GPU needed) with ``scale`` typed as argv[1]; prints whether it dots.
BUILD_FOR_H200 = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource
from rsrs.model.relative_position_attention import _attention_by_key_rows as kernel

constants = {"KEY_COLUMNS": 64, "BLOCK_N": 64, "HEAD_DIM": 64, "IEEE": False, "BLOCK_M": 64}  # SAM-B, global
signature = {
    name: "constexpr" if name in constants else "*bf16" if name.endswith("_ptr") else "i32"
    for name in kernel.arg_names
} | {"scale": sys.argv[1]}
source = ASTSource(kernel, signature, constexprs={(kernel.arg_names.index(n),): v for n, v in constants.items()})
target = GPUTarget("cuda", 90, 32)
backend = CUDABackend(target)
options = backend.parse_options({})
context = triton._C.libtriton.ir.context()
triton._C.libtriton.ir.load_dialects(context)
backend.load_dialects(context)
module = source.make_ir(target, options, backend.get_codegen_implementation(options), backend.get_module_map(), context)
print("tt.dot" in str(module))
"""


@pytest.mark.parametrize("scale_type", ["fp32", "fp64"])
def test_kernel_builds_for_an_h200_whichever_float_type_the_scale_arrives_as(scale_type):
    """torch.compile's inductor passes the Python float ``scale`` as float64 where eager Triton passes float32: the
    kernel must build either way (a float64 scale once made its running maximum float64 and the build fail). Built
    in a child process without TRITON_INTERPRET, which this module's other tests may run under and which builds
    nothing."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    built = subprocess.run(
        [sys.executable, "-c", BUILD_FOR_H200, scale_type], env=env, capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stderr[-2000:]
    assert built.stdout.strip() == "True"

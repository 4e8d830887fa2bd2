"""SAM ViT attention with decomposed relative positions as one Triton kernel (rsrs.model.fused_attention's 'triton').

Scores are ``scale * q.k + rel_h[q, key row] + rel_w[q, key column]``. The 'channels' kernel folds the two tables
into the query as extra channels: exact, on cuDNN, but a global layer's query and key grow from 64 to 192
channels, so its score matmul does three times the work (SAM-B's four global layers: 23.1 of a compiled batch's
138.5 ms on an H200, benchmarks/results/traces_decoder/). FlexAttention's ``score_mod`` loads two table entries
per score, which made it about 8x slower than transformers' layer.

This kernel is flash attention (online softmax over key blocks) whose key block is one key row of the grid:
- the query block's ``rel_w`` tile (BLOCK_M x key columns) is the same for every key row, so it is loaded once;
- ``rel_h`` adds one value per query for each key row;
- the score matmul stays 64 channels deep (SAM-B's head width).
q, k and v are read where the qkv projection left them (strided, no copies), and the output is written in the
token-major layout the output projection reads. Inference only (no gradient, no dropout).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

#: Launch settings tried on a GPU the first time each shape runs (``triton.autotune``, keyed on the shape).
CONFIGS = [
    triton.Config({"BLOCK_M": block_m}, num_warps=warps, num_stages=stages)
    for block_m, warps, stages in [(64, 4, 3), (128, 4, 3), (128, 8, 3), (128, 8, 2)]
]


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b accumulated in float32; float32 operands multiplied exactly where IEEE (else as TF32 on a GPU)."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _attention_by_key_rows(
    q_ptr, k_ptr, v_ptr, rel_h_ptr, rel_w_ptr, out_ptr,
    q_b, q_h, q_n, k_b, k_h, k_n, v_b, v_h, v_n,  # strides (elements); the channel stride is 1
    rh_b, rh_h, rh_n, rw_b, rw_h, rw_n, o_b, o_h, o_n,
    scale, N, HEADS, KEY_ROWS,
    KEY_COLUMNS: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
):  # fmt: skip
    """One program: BLOCK_M queries of one image and head, against all keys, one key row per step."""
    log2e: tl.constexpr = 1.4426950408889634
    block, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // HEADS, bh % HEADS
    queries = block * BLOCK_M + tl.arange(0, BLOCK_M)
    columns = tl.arange(0, BLOCK_N)
    channels = tl.arange(0, HEAD_DIM)
    query_in, column_in = queries < N, columns < KEY_COLUMNS

    q = tl.load(
        q_ptr + b * q_b + h * q_h + queries[:, None] * q_n + channels[None, :], mask=query_in[:, None], other=0.0
    )
    rel_w = tl.load(  # BLOCK_M x BLOCK_N, the same for every key row
        rel_w_ptr + b * rw_b + h * rw_h + queries[:, None] * rw_n + columns[None, :],
        mask=query_in[:, None] & column_in[None, :],
        other=0.0,
    ).to(tl.float32)
    rel_h_rows = rel_h_ptr + b * rh_b + h * rh_h + queries * rh_n
    rel_w = tl.where(column_in[None, :], rel_w, float("-inf")) * log2e  # columns past the grid score nothing

    # inductor passes a Python float as float64 (eager Triton as float32): cast once, or the scores turn float64
    score_scale = tl.full([], scale * log2e, tl.float32)
    running_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for row in range(0, KEY_ROWS):
        keys = row * KEY_COLUMNS + columns
        k = tl.load(
            k_ptr + b * k_b + h * k_h + keys[None, :] * k_n + channels[:, None], mask=column_in[None, :], other=0.0
        )
        scores = _dot(q, k, IEEE) * score_scale  # BLOCK_M x BLOCK_N, in log2 units
        rel_h = tl.load(rel_h_rows + row, mask=query_in, other=0.0).to(tl.float32)
        scores += rel_w + rel_h[:, None] * log2e
        new_max = tl.maximum(running_max, tl.max(scores, 1))
        p = tl.exp2(scores - new_max[:, None])
        correction = tl.exp2(running_max - new_max)
        running_sum = running_sum * correction + tl.sum(p, 1)
        v = tl.load(
            v_ptr + b * v_b + h * v_h + keys[:, None] * v_n + channels[None, :], mask=column_in[:, None], other=0.0
        )
        acc = acc * correction[:, None] + _dot(p.to(v.dtype), v, IEEE)
        running_max = new_max
    out = acc / running_sum[:, None]
    tl.store(
        out_ptr + b * o_b + h * o_h + queries[:, None] * o_n + channels[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=query_in[:, None],
    )


_tuned = triton.autotune(configs=CONFIGS, key=["KEY_COLUMNS", "HEAD_DIM", "N"])(_attention_by_key_rows)


@torch.library.triton_op("rsrs::attention_by_key_rows", mutates_args=())
def attention_by_key_rows(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, scale: float
) -> torch.Tensor:
    """softmax(scale * q.k + rel_h[q, key row] + rel_w[q, key column]) v, keys row-major on a rows x columns grid.

    query, key, value: B x heads x N x d (channels contiguous, d a power of two >= 16); rel_h: B x heads x N x rows;
    rel_w: B x heads x N x columns  ->  B x heads x N x d, stored token-major (its transpose(1, 2) is contiguous).
    Matmuls accumulate in float32; float32 inputs are multiplied exactly (no TF32).
    """
    B, heads, N, d = query.shape
    rows, columns = rel_h.shape[-1], rel_w.shape[-1]
    out = query.new_empty(B, N, heads, d).transpose(1, 2)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B * heads)  # noqa: E731
    # tuned on a GPU; elsewhere (Triton's interpreter, TRITON_INTERPRET=1, as the CPU tests run it) one small block
    kernel, fixed = (_tuned, {}) if query.is_cuda else (_attention_by_key_rows, {"BLOCK_M": 16})
    torch.library.wrap_triton(kernel)[grid](
        query, key, value, rel_h, rel_w, out,
        *query.stride()[:3], *key.stride()[:3], *value.stride()[:3],
        *rel_h.stride()[:3], *rel_w.stride()[:3], *out.stride()[:3],
        scale, N, heads, rows,
        KEY_COLUMNS=columns, BLOCK_N=max(16, triton.next_power_of_2(columns)), HEAD_DIM=d,
        IEEE=query.dtype == torch.float32, **fixed,
    )  # fmt: skip
    return out

"""SAM ViT attention with its relative positions added inside one attention kernel.

transformers' ``SamVisionAttention`` (and its SDPA subclass) scores a query at (qy, qx) against a key at (ky, kx) as

    scale * q.k + q.Rh[qy, ky] + q.Rw[qx, kx]       (decomposed relative positions, MViTv2; q unscaled)

where Rh, Rw are its per-axis embedding tables resized to the window. It materialises the last two terms as a
B x heads x N x N bias (N = 4096 tokens in SAM-B's global layers at 1024 px) and adds it outside the attention
kernel; in bf16 eager most of SAM ViT's time goes to that element-wise work. Here the terms stay two small
per-query tables, ``rel_h``: B x heads x N x H and ``rel_w``: B x heads x N x W, and one of four kernels adds
them to the scores:

- 'channels' (the default off a GPU): the tables become extra query channels, met by one-hot key channels,
  q' = [scale * q, rel_h, rel_w] and k' = [k, onehot(key row), onehot(key column)], so that
  q'.k' = scale * q.k + rel_h[q, ky] + rel_w[q, kx] exactly and SDPA runs without a mask on its fused kernels
  (cuDNN on an H200), gradients and dropout included. The wider query/key costs matmul work, which tensor cores
  do cheaply, where the bias cost memory traffic: on an H200, compiled, a global layer of 32 images takes 7.4 ms
  against 11.5 for transformers' layer, a windowed one 2.6 against 3.3 (benchmarks/results/sam_attention.json);
- 'flex': FlexAttention's ``score_mod`` adds them to each score inside its fused kernel. Its per-score loads
  from the tables made it about 8x slower than transformers' layer on the H200 (same file); kept to compare;
- 'sdpa': the tables are summed into the bias for SDPA, as transformers does;
- 'triton': this project's flash-attention kernel whose key blocks are key rows, so the tables add one load per
  query per key row and the score matmul stays d channels deep (rsrs.model.relative_position_attention; needs the
  triton package and a GPU, inference only: elsewhere the layer runs 'channels'). The default on a GPU where
  triton is installed (:func:`default_kernel`): on an H200, compiled, a global layer of 32 images takes 6.6 ms
  against 7.5 for 'channels', a windowed one the same 2.5 (benchmarks/results/sam_attention_triton.json).

Applied after construction (STYLE rule 4): each attention layer's ``forward`` is replaced on the instance; its
parameters, their names, LoRA adapters on ``qkv``/``proj`` and the ``get_rel_pos`` it uses stay as they are.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam.modeling_sam import SamVisionAttention

from rsrs.model.instance_forward import bind_forward, runs_forward

try:
    from torch.nn.attention.flex_attention import flex_attention
except ImportError:  # torch < 2.5
    flex_attention = None

Kernel = Literal["channels", "flex", "sdpa", "triton"]
KERNELS: tuple[Kernel, ...] = ("channels", "flex", "sdpa", "triton")
#: Query/key channels of the 'channels' kernel come in whole multiples of this (16 bytes of bf16): its fused
#: kernels need it, and relative-position tables this wide are aligned matmul outputs (SAM-B's 14-wide windows
#: took a slow unaligned kernel).
CHANNEL_MULTIPLE = 8


def fuse_sam_attention(model: nn.Module, *, kernel: Kernel = "channels") -> int:
    """Give every SAM ViT attention layer in ``model`` the fused forward; returns how many layers it changed.

    ``kernel``: 'channels' (the relative positions as extra query/key channels of a maskless SDPA), 'flex'
    (FlexAttention with them in its ``score_mod``; SDPA with the bias where it cannot run), 'sdpa' (SDPA with
    the bias built from the same tables) or 'triton' (one Triton kernel; 'channels' where it cannot run).
    Windowed and global layers alike; layers already fused are set to ``kernel``.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "flex" and flex_attention is None:
        raise RuntimeError(
            f"kernel='flex' needs torch >= 2.5 (torch.nn.attention.flex_attention); found {torch.__version__}"
        )
    if kernel == "triton":
        try:  # registers torch.ops.rsrs.attention_by_key_rows
            import rsrs.model.relative_position_attention  # noqa: F401
        except ImportError as err:
            raise RuntimeError(
                f"kernel='triton' needs the triton package (CUDA builds of torch bring it): {err}"
            ) from err
    layers = [m for m in model.modules() if isinstance(m, SamVisionAttention)]
    for layer in layers:
        layer.fused_kernel = kernel
    return bind_forward(layers, fused_sam_attention_forward)


def default_kernel(model: nn.Module) -> Kernel:
    """'triton' for a model on a GPU where the triton package is installed, else 'channels'.

    On an H200 'triton' made rsrefseg-b's compiled workers' function 230 tiles/s against 224
    (benchmarks/results/encoder_fusion_rsrefseg-b_triton.json); off a GPU it would only run Triton's interpreter.
    """
    on_gpu = any(parameter.is_cuda for parameter in model.parameters())
    return "triton" if on_gpu and importlib.util.find_spec("triton") is not None else "channels"


def is_fused(module: nn.Module) -> bool:
    """Whether ``module`` is a SAM ViT attention layer running :func:`fused_sam_attention_forward`."""
    return runs_forward(module, fused_sam_attention_forward)


def fused_sam_attention_forward(
    self: SamVisionAttention, hidden_states: torch.Tensor, output_attentions: bool | None = None
) -> tuple[torch.Tensor, None]:
    """``SamVisionAttention.forward`` computed by one fused kernel (bound to a layer by :func:`fuse_sam_attention`).

    hidden_states: B x H x W x C (B = images, or images x windows in windowed layers) -> (B x H x W x C, None);
    attention weights are never returned, as with transformers' SDPA class.
    """
    B, H, W, C = hidden_states.shape
    heads = self.num_attention_heads
    qkv = self.qkv(hidden_states).reshape(B, H * W, 3, heads, -1).permute(2, 0, 3, 1, 4)  # 3 x B x heads x N x d
    query, key, value = qkv.unbind(0)
    dropout = self.dropout if self.training else 0.0
    if not self.use_rel_pos:
        out = F.scaled_dot_product_attention(query, key, value, scale=self.scale)
    elif self.fused_kernel == "triton" and _triton_runs(self, query):
        rel_h, rel_w = relative_position_tables(self, query, height=H, width=W)
        out = torch.ops.rsrs.attention_by_key_rows(query, key, value, rel_h, rel_w, self.scale)
    elif self.fused_kernel in ("channels", "triton"):
        rel_h, rel_w = relative_position_tables(self, query, height=H, width=W, keys_multiple=CHANNEL_MULTIPLE)
        out = _sdpa_with_position_channels(query, key, value, rel_h, rel_w, width=W, scale=self.scale, dropout=dropout)
    else:
        rel_h, rel_w = relative_position_tables(self, query, height=H, width=W)
        if _flex_runs(self, query):
            out = _flex_with_relative_positions(query, key, value, rel_h, rel_w, scale=self.scale)
        else:
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, heads, H * W, H * W)  # key index ky*W + kx
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout, scale=self.scale)
    out = out.transpose(1, 2).reshape(B, H, W, -1)  # B x H x W x heads*d, heads side by side per token
    return self.proj(out), None


def relative_position_tables(
    layer: SamVisionAttention, query: torch.Tensor, *, height: int, width: int, keys_multiple: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two decomposed relative-position terms of every query, per key row and per key column.

    query: B x heads x N x d (unscaled, N = height * width, row-major)
    -> rel_h: B x heads x N x height' (q . Rh[qy, ky]), rel_w: B x heads x N x width' (q . Rw[qx, kx]);
    in the query's dtype, as transformers computes them. height' and width' are height and width rounded up to
    a multiple of ``keys_multiple``; the extra key rows and columns hold zeros.
    """
    B, heads, N, d = query.shape
    emb_h = _keys_padded(layer.get_rel_pos(height, height, layer.rel_pos_h), keys_multiple)  # H x H' x d: q row x k row
    emb_w = _keys_padded(layer.get_rel_pos(width, width, layer.rel_pos_w), keys_multiple)  # W x W' x d: q col x k col
    grid = query.reshape(B, heads, height, width, d)
    rel_h = torch.einsum("bnyxd,ykd->bnyxk", grid, emb_h).reshape(B, heads, N, -1)
    rel_w = torch.einsum("bnyxd,xkd->bnyxk", grid, emb_w).reshape(B, heads, N, -1)
    return rel_h, rel_w


def _keys_padded(table: torch.Tensor, multiple: int) -> torch.Tensor:
    """queries x keys x d -> queries x keys' x d, keys' the next multiple of ``multiple``, zeros in the new keys."""
    return F.pad(table, (0, 0, 0, -table.shape[1] % multiple))


def _flex_runs(layer: SamVisionAttention, query: torch.Tensor) -> bool:
    """Whether this call goes to FlexAttention: asked for, and neither attention dropout nor a gradient on the CPU,
    which flex (torch 2.11) lacks; SDPA with the bias takes those calls."""
    if layer.fused_kernel != "flex" or (layer.training and layer.dropout > 0):
        return False
    return query.is_cuda or not (torch.is_grad_enabled() and query.requires_grad)


def _triton_runs(layer: SamVisionAttention, query: torch.Tensor) -> bool:
    """Whether this call goes to the 'triton' kernel: on a GPU (or Triton's interpreter, TRITON_INTERPRET=1), for
    inference, with a power-of-two head width of at least 16 (its tiles' sizes)."""
    d = query.shape[-1]
    return (
        (query.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")
        and not (torch.is_grad_enabled() and query.requires_grad)
        and not (layer.training and layer.dropout > 0)
        and d >= 16
        and d & (d - 1) == 0
    )


def _sdpa_with_position_channels(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    *,
    width: int,
    scale: float,
    dropout: float,
) -> torch.Tensor:
    """Maskless SDPA whose scores gain rel_h[q, key row] + rel_w[q, key column] through extra channels.

    query, key, value: B x heads x N x d; rel_h: B x heads x N x H'; rel_w: B x heads x N x W' (H' >= H key rows,
    W' >= ``width`` key columns; a key's one-hot channels beyond its grid stay zero)  ->  B x heads x N x d.
    The query is scaled before SDPA (scale 1), as transformers' eager SAM attention does; query and key channels
    are padded with zeros to a multiple of CHANNEL_MULTIPLE, which the fused kernels need.
    """
    B, heads, N, d = query.shape
    key_rows, key_columns = rel_h.shape[-1], rel_w.shape[-1]
    token = torch.arange(N, device=key.device)
    key_row = (token[:, None] // width == torch.arange(key_rows, device=key.device)).to(key.dtype)  # N x H' one-hot
    key_column = (token[:, None] % width == torch.arange(key_columns, device=key.device)).to(key.dtype)  # N x W'
    pad = -(d + key_rows + key_columns) % CHANNEL_MULTIPLE  # 0 when d is a multiple too
    query = torch.cat([query * scale, rel_h, rel_w, query.new_zeros(B, heads, N, pad)], dim=-1)  # ... x N x d'
    key_channels = torch.cat([key_row, key_column, key.new_zeros(N, pad)], dim=-1).expand(B, heads, N, -1)
    key = torch.cat([key, key_channels], dim=-1)  # B x heads x N x d'
    return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=1.0)


def _flex_with_relative_positions(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    *,
    scale: float,
) -> torch.Tensor:
    """Attention whose scores gain rel_h[q, key row] + rel_w[q, key column] inside the kernel.

    query, key, value: B x heads x N x d; rel_h: B x heads x N x H; rel_w: B x heads x N x W  ->  B x heads x N x d
    """
    key_width = rel_w.shape[-1]

    def add_relative_positions(score, b, h, q_idx, kv_idx):
        return score + (rel_h[b, h, q_idx, kv_idx // key_width] + rel_w[b, h, q_idx, kv_idx % key_width])

    # Inside torch.compile flex is traced into the caller's graph; outside, on CUDA, it needs its own compiled
    # kernel (uncompiled flex is a reference that materialises the scores; on the CPU that reference is used).
    attend = flex_attention if torch.compiler.is_compiling() or not query.is_cuda else _compiled_flex()
    return attend(query, key, value, score_mod=add_relative_positions, scale=scale)


@functools.cache
def _compiled_flex():
    """FlexAttention compiled once per process, at static shapes (one kernel per window and global size)."""
    return torch.compile(flex_attention, dynamic=False)

"""The cascaded prompter of RSRefSeg 2: SigLIP2 text and patch features -> SAM 2 sparse and dense prompts.

Computed as the official ``CascadedPrompter`` does with the official configuration:

1. Two sets of ``num_queries`` text queries, both initialised by average-pooling the text token states over the
   token axis; each set has a learnable positional embedding. ``query_depth`` two-query blocks let each set attend
   to itself, to the text tokens and to the other set.
2. ``image_depth`` blocks refine the patch tokens with query set 1 (the image attends to the queries); the patch
   tokens carry a learnable positional embedding on the patch grid.
3. ``image_depth`` prompt blocks refine the image again with query set 2, then ``num_prompts`` learnable prompts
   attend to themselves, to query set 2 and to the image. An MLP turns the prompts into SAM 2's sparse prompts.
4. Dense prompt: the refined patch map through conv-BN-GELU-conv, upsampled (bilinear, corners aligned) to SAM 2's
   mask-input size, then at each pixel the cosine with the pooled text feature, times ``exp(logit_scale)`` plus
   ``logit_bias`` (SigLIP's own logit scale and bias).

Parameter names equal the official checkpoint's ``prompter.`` names (see ``model.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rsrs.model.rsrefseg2.blocks import MLP, OperationBlock


@dataclass
class CascadeOutput:
    """Cascaded prompter output for P (image, query) pairs.

    sparse: P x num_prompts x D   sparse prompts for SAM 2's mask decoder
    dense: P x 1 x m x m          dense prompt logits on SAM 2's mask-input grid (m = 256 for a 1024 input)
    queries1, queries2: P x num_queries x C   the two query sets after the two-query blocks (for the loss)
    """

    sparse: torch.Tensor
    dense: torch.Tensor
    queries1: torch.Tensor
    queries2: torch.Tensor


class CascadedPrompter(nn.Module):
    """Text queries -> refined image -> prompts (see the module docstring).

    Args:
        text_dim: SigLIP2 text width C (1152). image_dim: SigLIP2 vision width (1152; equal to the pooled text
            width, as the dense prompt takes their cosine). prompt_dim: SAM 2's prompt width D (256).
        image_grid: side of the learnable image positional embedding (the patch grid, 32 for 512 / 16).
        num_queries, num_prompts, num_heads, mlp_dim, internal_dim: as in the official configuration.
        query_operations, image_operations, prompt_operations: operation names of each block kind, in order.
        query_depth, image_depth, prompt_depth: blocks of each kind.
    """

    def __init__(
        self,
        *,
        text_dim: int,
        image_dim: int,
        prompt_dim: int,
        image_grid: int,
        num_queries: int,
        num_prompts: int,
        num_heads: int,
        mlp_dim: int,
        internal_dim: int,
        query_operations: Sequence[str],
        image_operations: Sequence[str],
        prompt_operations: Sequence[str],
        query_depth: int,
        image_depth: int,
        prompt_depth: int,
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        widths = dict(num_heads=num_heads, mlp_dim=mlp_dim, internal_dim=internal_dim)
        # registration order follows the official module, so state dicts list names in the same order
        self.text_query_pe_embedding1 = nn.Parameter(torch.randn(num_queries, text_dim))
        self.text_query_pe_embedding2 = nn.Parameter(torch.randn(num_queries, text_dim))
        query_dims = {"query1": text_dim, "query2": text_dim, "text": text_dim}
        self.two_queries_text_attn_layers = nn.ModuleList(
            OperationBlock(query_operations, dims=query_dims, **widths) for _ in range(query_depth)
        )
        self.img_pe = nn.Parameter(torch.randn(1, image_dim, image_grid, image_grid))
        image_dims = {"img": image_dim, "text": text_dim}
        self.queries1_to_img_attn_layers = nn.ModuleList(
            OperationBlock(image_operations, dims=image_dims, **widths) for _ in range(image_depth)
        )
        prompt_dims = {"prompt": prompt_dim, "img": image_dim, "text": text_dim}
        self.prompt_queries2_img_attn_layers = nn.ModuleList(
            OperationBlock(prompt_operations, dims=prompt_dims, **widths) for _ in range(prompt_depth)
        )
        self.prompt_pe_embedding = nn.Parameter(torch.randn(num_prompts, prompt_dim))
        self.prompt_embedding = nn.Parameter(torch.randn(num_prompts, prompt_dim))
        self.sparse_prompt_mlp = MLP(prompt_dim, mlp_dim, prompt_dim)
        self.dense_prompt_conv = nn.Sequential(
            nn.Conv2d(image_dim, image_dim // 2, kernel_size=3, padding=1),
            nn.BatchNorm2d(image_dim // 2),
            nn.GELU(),
            nn.Conv2d(image_dim // 2, image_dim, kernel_size=3, padding=1),
        )

    def forward(
        self,
        patches: torch.Tensor,
        tokens: torch.Tensor,
        pooled: torch.Tensor,
        *,
        grid: tuple[int, int],
        mask_size: tuple[int, int],
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
    ) -> CascadeOutput:
        """Prompts for P (image, query) pairs.

        patches: P x N x C SigLIP2 patch tokens (N = ny*nx, grid (ny, nx)); tokens: P x L x C text token states
        (padding included, as the official code sees them); pooled: P x C pooled text feature
        mask_size: (m, m), SAM 2's mask-input size; logit_scale, logit_bias: SigLIP's (1-element tensors)
        """
        P, N, C = patches.shape
        ny, nx = grid
        assert N == ny * nx, f"{N} patch tokens do not form a {ny}x{nx} grid"
        pe1 = self.text_query_pe_embedding1.expand(P, -1, -1)  # P x n x C
        pe2 = self.text_query_pe_embedding2.expand(P, -1, -1)
        queries1 = F.adaptive_avg_pool1d(tokens.transpose(1, 2), self.num_queries).transpose(1, 2)  # P x n x C
        queries2 = queries1
        for block in self.two_queries_text_attn_layers:
            out = block({"query1": queries1, "query2": queries2, "text": tokens}, {"query1": pe1, "query2": pe2})
            queries1, queries2 = out["query1"], out["query2"]

        img_pe = self.image_positional_embedding(grid)  # 1 x N x C
        img = patches
        text1 = queries1
        for block in self.queries1_to_img_attn_layers:
            out = block({"img": img, "text": text1}, {"img": img_pe, "text": pe1})
            img, text1 = out["img"], out["text"]

        prompt = self.prompt_embedding.expand(P, -1, -1)  # P x num_prompts x D
        prompt_pe = self.prompt_pe_embedding.expand(P, -1, -1)
        text2 = queries2
        pe = {"prompt": prompt_pe, "img": img_pe, "text": pe2}
        for block in self.prompt_queries2_img_attn_layers:
            out = block({"prompt": prompt, "img": img, "text": text2}, pe)
            prompt, img, text2 = out["prompt"], out["img"], out["text"]
        sparse = self.sparse_prompt_mlp(prompt)  # P x num_prompts x D

        refined = img.transpose(1, 2).reshape(P, C, ny, nx)  # P x C x ny x nx
        dense = self.dense_logits(refined, pooled, mask_size=mask_size, logit_scale=logit_scale, logit_bias=logit_bias)
        return CascadeOutput(sparse=sparse, dense=dense, queries1=queries1, queries2=queries2)

    def image_positional_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The learnable image positional embedding as tokens, 1 x N x C; resized (bicubic, corners aligned, as the
        official code does) when the patch grid differs from the one it was built for."""
        pe = self.img_pe
        if tuple(pe.shape[-2:]) != tuple(grid):
            pe = F.interpolate(pe, size=grid, mode="bicubic", align_corners=True)
        return pe.flatten(2).transpose(1, 2)

    def dense_logits(
        self,
        refined: torch.Tensor,
        pooled: torch.Tensor,
        *,
        mask_size: tuple[int, int],
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
    ) -> torch.Tensor:
        """Dense prompt: cosine of the conv-refined, upsampled patch map with the pooled text, as a SigLIP logit.

        refined: P x C x ny x nx; pooled: P x C  ->  P x 1 x m x m
        """
        x = self.dense_prompt_conv(refined)  # P x C x ny x nx
        cos = upsampled_cosine(x, pooled, size=mask_size)  # P x m x m
        return (cos * logit_scale.exp() + logit_bias)[:, None]


def upsampled_cosine(x: torch.Tensor, t: torch.Tensor, *, size: tuple[int, int], eps: float = 1e-12) -> torch.Tensor:
    """The cosine between a bilinearly upsampled feature map (corners aligned) and a vector, at every output pixel,
    without upsampling the C channels.

    Exactly ``cos(interpolate(x, size), t)``: the dot product commutes with interpolation, so its numerator is the
    upsampled 1-channel map x.t; the squared norm of a bilinear mix of four neighbouring patches is the quadratic
    form of its weights with the neighbours' Gram matrix, built from six small maps of patch dot products. At real
    size (1152 channels, 32 x 32 -> 256 x 256) the direct way holds 75M values per pair (over torch's 2^31-element
    limit at 32 pairs); this holds a few thousand. Computed in float32 whatever the input dtype.

    x: P x C x ny x nx; t: P x C  ->  P x m x m (float32)
    """
    x = x.float()
    t = F.normalize(t.float(), dim=1, eps=eps)
    P, C, ny, nx = x.shape
    (y0, y1, wy), (x0, x1, wx) = _bilinear_taps(ny, size[0], x.device), _bilinear_taps(nx, size[1], x.device)
    dot = torch.einsum("pchw,pc->phw", x, t)  # P x ny x nx
    num = F.interpolate(dot[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]  # P x m x m

    def pair(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(dim=1)  # dot products of patches along C

    # each P x ny x nx, zero-padded past the last row/column (where a neighbour's weight is zero anyway)
    grams = {
        "sq": pair(x, x),  # |x|^2
        "h": F.pad(pair(x[..., :-1], x[..., 1:]), (0, 1)),  # with the right neighbour
        "v": F.pad(pair(x[:, :, :-1], x[:, :, 1:]), (0, 0, 0, 1)),  # with the lower neighbour
        "d": F.pad(pair(x[:, :, :-1, :-1], x[:, :, 1:, 1:]), (0, 1, 0, 1)),  # with the lower right one
        "a": F.pad(pair(x[:, :, :-1, 1:], x[:, :, 1:, :-1]), (0, 1, 0, 1)),  # right neighbour with lower one
    }

    def at(name: str, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return grams[name][:, rows[:, None], cols[None, :]]  # P x m x m

    a, b = (1 - wy)[:, None], wy[:, None]  # m x 1: weights of rows y0, y1
    c, d = (1 - wx)[None, :], wx[None, :]  # 1 x m: weights of columns x0, x1
    w00, w01, w10, w11 = a * c, a * d, b * c, b * d  # m x m
    norm2 = (
        w00**2 * at("sq", y0, x0) + w01**2 * at("sq", y0, x1) + w10**2 * at("sq", y1, x0) + w11**2 * at("sq", y1, x1)
        + 2 * (w00 * w01 * at("h", y0, x0) + w10 * w11 * at("h", y1, x0) + w00 * w10 * at("v", y0, x0)
               + w01 * w11 * at("v", y0, x1) + w00 * w11 * at("d", y0, x0) + w01 * w10 * at("a", y0, x0))
    )  # fmt: skip
    return num / norm2.clamp(min=0).sqrt().clamp(min=eps)


def _bilinear_taps(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of ``n_out`` positions of a corners-aligned bilinear resize: the two input indices and the weight
    of the second (torch's own source-index formula)."""
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = torch.arange(n_out, device=device, dtype=torch.float32) * scale
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    return lo, hi, src - lo

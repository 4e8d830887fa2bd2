"""AttnPrompter (RSRefSeg, eq. 3-4): text-activated SigLIP features -> SAM sparse and dense prompts.

For patch tokens ``v`` and text features, each patch is weighted by how strongly SigLIP matches it to the text:
``v_global = v * sigma(a(v, t_global)) + v`` and ``v_local = mean_j(v * sigma(a(v, t_j))) + v`` over the
query's real tokens ``j``, where ``a(v, t) = cos(v, t) * exp(logit_scale) + logit_bias`` is SigLIP's own logit.
``[v_global, v_local, v]`` is projected to SAM's prompt width, given SAM's positional encoding, and reduced by two
stride-2 convolutions from the 27x27 patch grid to 7x7 = 49 sparse tokens. The global activation logits are
the dense prompt (SAM's mask input).

With ``position_grid = g`` (not in the paper) the pooled query also names a coarse g x g map of logits, upsampled
to the patch grid and added to the global activation logits: a query-dependent prior over *where* in the image,
which words such as "leftmost" or "in the upper right" need and patch-text similarity alone cannot express. Its
projection starts at zero, so a trained paper-style prompter gains it without changing its output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rsrs.model.outputs import PromptOutput


def activation_logits(
    patches: torch.Tensor, text: torch.Tensor, *, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """SigLIP logits of every patch against every text vector.

    patches: P x N x C; text: P x T x C  ->  P x N x T
    """
    cos = F.normalize(patches, dim=-1) @ F.normalize(text, dim=-1).transpose(1, 2)
    return cos * logit_scale.exp() + logit_bias


def text_activated_features(
    patches: torch.Tensor,
    pooled: torch.Tensor,
    tokens: torch.Tensor,
    valid: torch.Tensor,
    *,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    position_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3-4: ``[v_global, v_local, v]`` and the global activation logits.

    patches: P x N x C, pooled: P x C, tokens: P x L x C, valid: P x L (bool)
    position_logits: P x N, added to the global logits before they weigh the patches (None: the paper's eq. 3)
    returns: P x N x 3C features and P x N global logits
    """
    scale = dict(logit_scale=logit_scale, logit_bias=logit_bias)
    global_logits = activation_logits(patches, pooled[:, None, :], **scale)[..., 0]  # P x N
    if position_logits is not None:
        global_logits = global_logits + position_logits
    v_global = patches * torch.sigmoid(global_logits)[..., None] + patches
    local_weights = torch.sigmoid(activation_logits(patches, tokens, **scale))  # P x N x L
    mask = valid[:, None, :].to(local_weights.dtype)  # P x 1 x L
    mean_weight = (local_weights * mask).sum(-1) / mask.sum(-1).clamp_min(1)  # P x N
    v_local = patches * mean_weight[..., None] + patches  # mean_j(v * w_j) == v * mean_j(w_j)
    return torch.cat([v_global, v_local, patches], dim=-1), global_logits


def _conv_block(in_ch: int, out_ch: int, *, kernel: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=kernel, stride=stride, padding=kernel // 2),
        nn.GroupNorm(min(groups, out_ch), out_ch),
        nn.GELU(),
    )


class AttnPrompter(nn.Module):
    """Turns SigLIP patch tokens and text features into SAM prompts.

    Args:
        feature_dim: SigLIP width C (1152 for so400m).
        prompt_dim: SAM's prompt width D (256).
        norm_groups: GroupNorm groups.
        position_grid: side g of the query's coarse position map (0: none, as in the paper).
    """

    def __init__(self, *, feature_dim: int, prompt_dim: int, norm_groups: int = 32, position_grid: int = 0) -> None:
        super().__init__()
        self.position_grid = position_grid
        self.position = nn.Linear(feature_dim, position_grid**2) if position_grid else None
        if self.position is not None:  # zero: the map starts flat, leaving a trained prompter's output unchanged
            nn.init.zeros_(self.position.weight)
            nn.init.zeros_(self.position.bias)
        self.project = _conv_block(3 * feature_dim, prompt_dim, kernel=1, stride=1, groups=norm_groups)
        self.down1 = _conv_block(prompt_dim, prompt_dim, kernel=3, stride=2, groups=norm_groups)
        self.down2 = _conv_block(prompt_dim, prompt_dim, kernel=3, stride=2, groups=norm_groups)
        self.out = nn.Conv2d(prompt_dim, prompt_dim, kernel_size=1)

    def forward(
        self,
        patches: torch.Tensor,
        pooled: torch.Tensor,
        tokens: torch.Tensor,
        valid: torch.Tensor,
        *,
        grid: tuple[int, int],
        positional: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
    ) -> PromptOutput:
        """Prompts for P (image, query) pairs.

        patches: P x N x C (N = ny*nx); pooled: P x C; tokens: P x L x C; valid: P x L
        positional: D x ny x nx, SAM's positional encoding on the patch grid
        """
        P, N, C = patches.shape
        ny, nx = grid
        assert N == ny * nx, f"{N} patch tokens do not form a {ny}x{nx} grid"
        feats, global_logits = text_activated_features(
            patches,
            pooled,
            tokens,
            valid,
            logit_scale=logit_scale,
            logit_bias=logit_bias,
            position_logits=self.position_logits(pooled, grid),
        )
        x = feats.transpose(1, 2).reshape(P, 3 * C, ny, nx)  # P x 3C x 27 x 27
        x = self.project(x) + positional[None].to(feats.dtype)  # P x D x 27 x 27
        x = self.out(self.down2(self.down1(x)))  # P x D x 7 x 7
        sparse = x.flatten(2).transpose(1, 2)  # P x 49 x D
        return PromptOutput(sparse=sparse, activation=global_logits.reshape(P, ny, nx))

    def position_logits(self, pooled: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor | None:
        """The query's position map on the patch grid, or None without ``position_grid``.

        pooled: P x C  ->  P x N (N = ny*nx)
        """
        if self.position is None:
            return None
        g = self.position_grid
        coarse = self.position(pooled).reshape(len(pooled), 1, g, g)  # P x 1 x g x g
        fine = F.interpolate(coarse, size=grid, mode="bilinear", align_corners=False)  # P x 1 x ny x nx
        return fine.flatten(1)

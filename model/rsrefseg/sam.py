"""RSRefSeg's SAM (ViT image encoder, prompt encoder, mask decoder) from a spec: transformers weights, a Meta
``.pth`` checkpoint, or random init; its relative-position index built on the weights' device."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import SamConfig, SamModel
from transformers.models.sam.modeling_sam import SamVisionAttention

from rsrs.model.backbones import ATTENTION
from rsrs.model.rsrefseg.config import SamSpec
from rsrs.model.rsrefseg.sam_convert import load_meta_sam
from rsrs.model.torch_files import load_strict
from rsrs.model.weights import resolve_pretrained


def sam_config(spec: SamSpec) -> SamConfig:
    """SamConfig from the spec."""
    return SamConfig(
        vision_config=spec.vision,
        prompt_encoder_config=spec.prompt_encoder,
        mask_decoder_config=spec.mask_decoder,
    )


def build_sam(spec: SamSpec, *, pretrained: bool, weights_root: str | Path | None) -> SamModel:
    """SamModel from a transformers directory, a Meta ``.pth`` checkpoint, or random init."""
    return _relative_positions_on_device(_load_sam(spec, pretrained=pretrained, weights_root=weights_root))


def _load_sam(spec: SamSpec, *, pretrained: bool, weights_root: str | Path | None) -> SamModel:
    if pretrained and spec.pretrained:
        path = resolve_pretrained(spec.pretrained, what="SAM", weights_root=weights_root)
        if path.is_file():  # Meta's original checkpoint
            model = SamModel._from_config(sam_config(spec), attn_implementation=ATTENTION)
            hint = "use the preset of the same size (vit_b: rsrefseg-b, vit_l: rsrefseg-l)"
            load_strict(model, load_meta_sam(path), path=path, hint=hint)
            return model
        return SamModel.from_pretrained(str(path), attn_implementation=ATTENTION)
    return SamModel._from_config(sam_config(spec), attn_implementation=ATTENTION)


def _relative_positions_on_device(sam: SamModel) -> SamModel:
    """SAM whose attention layers build their relative-position index on the weights' device.

    transformers builds that index on the CPU, so on a GPU every windowed attention layer makes a blocking
    host-to-device copy: 24 waits per SAM-B forward that drain the GPU's queue and leave it idle while
    Python launches the next kernels (slow when other threads hold the GIL, and impossible in a CUDA graph).
    """
    for module in sam.modules():
        if isinstance(module, SamVisionAttention):
            module.get_rel_pos = relative_position_embeddings
    return sam


def relative_position_embeddings(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Embeddings of the relative offsets between ``q_size`` query and ``k_size`` key positions on one axis.

    The table is linearly resized to the 2*max-1 possible offsets; when q and k differ in length, the shorter
    axis's coordinates are stretched to the longer one's. rel_pos: L x C -> q_size x k_size x C
    """
    offsets = 2 * max(q_size, k_size) - 1
    table = F.interpolate(rel_pos.T[None], size=offsets, mode="linear")[0].T  # offsets x C
    q_stretch, k_stretch = max(k_size / q_size, 1.0), max(q_size / k_size, 1.0)
    q = torch.arange(q_size, device=rel_pos.device)[:, None] * q_stretch
    k = torch.arange(k_size, device=rel_pos.device)[None, :] * k_stretch
    return table[(q - k + (k_size - 1) * k_stretch).long()]  # q_size x k_size x C

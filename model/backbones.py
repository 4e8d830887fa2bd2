"""Building the two transformers backbones (SigLIP, SAM) from a config: at random init or from local weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from transformers import SamConfig, SamModel, SiglipConfig, SiglipModel
from transformers.models.sam.modeling_sam import SamVisionAttention

from rsrs.core.errors import CheckpointError
from rsrs.model.config import SamSpec, SiglipSpec
from rsrs.model.sam_convert import load_meta_sam
from rsrs.model.tokenizer import ByteTokenizer, Padding, PretrainedTokenizer, Tokenizer
from rsrs.model.torch_files import load_strict
from rsrs.model.weights import resolve_pretrained

if TYPE_CHECKING:
    from rsrs.model.rsrefseg2.config import Siglip2Spec

_ATTN = "sdpa"


def siglip_config(spec: SiglipSpec | Siglip2Spec, *, vision_head: bool = False) -> SiglipConfig:
    """SiglipConfig from the spec; the pooled-image head is dropped unless ``vision_head`` (RSRefSeg uses patch
    tokens only)."""
    vision: dict[str, Any] = {"vision_use_head": vision_head, **spec.vision}
    return SiglipConfig(text_config=spec.text, vision_config=vision)


def sam_config(spec: SamSpec) -> SamConfig:
    """SamConfig from the spec."""
    return SamConfig(
        vision_config=spec.vision,
        prompt_encoder_config=spec.prompt_encoder,
        mask_decoder_config=spec.mask_decoder,
    )


def build_siglip(
    spec: SiglipSpec | Siglip2Spec, *, pretrained: bool, weights_root: str | Path | None, vision_head: bool = False
) -> SiglipModel:
    """SiglipModel (also SigLIP2's fixed-resolution models): pretrained weights when asked and configured, else
    random init (on the current device); the vision pooling head only with ``vision_head``."""
    if pretrained and spec.pretrained:
        path = resolve_pretrained(spec.pretrained, what="SigLIP", weights_root=weights_root)
        config = SiglipConfig.from_pretrained(str(path))
        config.vision_config.vision_use_head = vision_head
        return SiglipModel.from_pretrained(str(path), config=config, attn_implementation=_ATTN)
    return SiglipModel._from_config(siglip_config(spec, vision_head=vision_head), attn_implementation=_ATTN)


def build_sam(spec: SamSpec, *, pretrained: bool, weights_root: str | Path | None) -> SamModel:
    """SamModel from a transformers directory, a Meta ``.pth`` checkpoint, or random init."""
    return _relative_positions_on_device(_load_sam(spec, pretrained=pretrained, weights_root=weights_root))


def _load_sam(spec: SamSpec, *, pretrained: bool, weights_root: str | Path | None) -> SamModel:
    if pretrained and spec.pretrained:
        path = resolve_pretrained(spec.pretrained, what="SAM", weights_root=weights_root)
        if path.is_file():  # Meta's original checkpoint
            model = SamModel._from_config(sam_config(spec), attn_implementation=_ATTN)
            hint = "use the preset of the same size (vit_b: rsrefseg-b, vit_l: rsrefseg-l)"
            load_strict(model, load_meta_sam(path), path=path, hint=hint)
            return model
        return SamModel.from_pretrained(str(path), attn_implementation=_ATTN)
    return SamModel._from_config(sam_config(spec), attn_implementation=_ATTN)


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


def build_tokenizer(
    spec: SiglipSpec | Siglip2Spec,
    *,
    pretrained: bool,
    weights_root: str | Path | None,
    padding: Padding = "max_length",
    download: bool = True,
) -> Tokenizer:
    """The text tokenizer the SigLIP spec asks for; random-init models (``pretrained=False``) use bytes."""
    if spec.tokenizer == "bytes" or not pretrained:
        return ByteTokenizer(length=spec.text_length, padding=padding)
    if not spec.pretrained:
        raise CheckpointError("siglip.tokenizer 'pretrained' needs siglip.pretrained (a hub id or directory)")
    path = resolve_pretrained(spec.pretrained, what="SigLIP tokenizer", weights_root=weights_root, download=download)
    return PretrainedTokenizer(path, length=spec.text_length, padding=padding)

"""The SigLIP image/text backbone (SigLIP for RSRefSeg, SigLIP2 for RSRefSeg 2) from a spec: at random init or from
local weights (its tokenizer: :func:`rsrs.model.tokenizer.build_tokenizer`). Architecture-specific backbones live
in their folders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import SiglipConfig, SiglipModel

from rsrs.model.weights import resolve_pretrained

if TYPE_CHECKING:
    from rsrs.model.rsrefseg.config import SiglipSpec
    from rsrs.model.rsrefseg2.config import Siglip2Spec

ATTENTION = "sdpa"  # transformers' attention implementation for every backbone


def siglip_config(spec: SiglipSpec | Siglip2Spec, *, vision_head: bool = False) -> SiglipConfig:
    """SiglipConfig from the spec; the pooled-image head is dropped unless ``vision_head`` (RSRefSeg uses patch
    tokens only)."""
    vision: dict[str, Any] = {"vision_use_head": vision_head, **spec.vision}
    return SiglipConfig(text_config=spec.text, vision_config=vision)


def build_siglip(
    spec: SiglipSpec | Siglip2Spec, *, pretrained: bool, weights_root: str | Path | None, vision_head: bool = False
) -> SiglipModel:
    """SiglipModel (also SigLIP2's fixed-resolution models): pretrained weights when asked and configured, else
    random init (on the current device); the vision pooling head only with ``vision_head``."""
    if pretrained and spec.pretrained:
        path = resolve_pretrained(spec.pretrained, what="SigLIP", weights_root=weights_root)
        config = SiglipConfig.from_pretrained(str(path))
        config.vision_config.vision_use_head = vision_head
        return SiglipModel.from_pretrained(str(path), config=config, attn_implementation=ATTENTION)
    return SiglipModel._from_config(siglip_config(spec, vision_head=vision_head), attn_implementation=ATTENTION)

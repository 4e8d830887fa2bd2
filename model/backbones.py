"""Building the two transformers backbones (SigLIP, SAM) from a config: at random init or from local weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import SamConfig, SamModel, SiglipConfig, SiglipModel

from rsrs.model.config import SamSpec, SiglipSpec
from rsrs.model.errors import CheckpointError
from rsrs.model.sam_convert import load_meta_sam
from rsrs.model.tokenizer import ByteTokenizer, PretrainedTokenizer, Tokenizer
from rsrs.model.weights import resolve_pretrained

_ATTN = "sdpa"


def siglip_config(spec: SiglipSpec) -> SiglipConfig:
    """SiglipConfig from the spec; the pooled-image head is dropped (RSRefSeg uses patch tokens only)."""
    vision: dict[str, Any] = {"vision_use_head": False, **spec.vision}
    return SiglipConfig(text_config=spec.text, vision_config=vision)


def sam_config(spec: SamSpec) -> SamConfig:
    """SamConfig from the spec."""
    return SamConfig(
        vision_config=spec.vision,
        prompt_encoder_config=spec.prompt_encoder,
        mask_decoder_config=spec.mask_decoder,
    )


def build_siglip(spec: SiglipSpec, *, pretrained: bool, weights_root: str | Path | None) -> SiglipModel:
    """SiglipModel: pretrained weights when asked and configured, else random init (on the current device)."""
    if pretrained and spec.pretrained:
        path = resolve_pretrained(spec.pretrained, what="SigLIP", weights_root=weights_root)
        config = SiglipConfig.from_pretrained(str(path))
        config.vision_config.vision_use_head = False
        return SiglipModel.from_pretrained(str(path), config=config, attn_implementation=_ATTN)
    return SiglipModel._from_config(siglip_config(spec), attn_implementation=_ATTN)


def build_sam(spec: SamSpec, *, pretrained: bool, weights_root: str | Path | None) -> SamModel:
    """SamModel from a transformers directory, a Meta ``.pth`` checkpoint, or random init."""
    if pretrained and spec.pretrained:
        path = resolve_pretrained(spec.pretrained, what="SAM", weights_root=weights_root)
        if path.is_file():  # Meta's original checkpoint
            model = SamModel._from_config(sam_config(spec), attn_implementation=_ATTN)
            try:
                model.load_state_dict(load_meta_sam(path), strict=True)
            except RuntimeError as err:
                first = str(err).strip().splitlines()[1:2] or [str(err)]
                raise CheckpointError(
                    f"SAM checkpoint {path} does not fit the preset's SAM config ({first[0].strip()}); "
                    "use the preset of the same size (vit_b: rsrefseg-b, vit_l: rsrefseg-l)"
                ) from None
            return model
        return SamModel.from_pretrained(str(path), attn_implementation=_ATTN)
    return SamModel._from_config(sam_config(spec), attn_implementation=_ATTN)


def build_tokenizer(spec: SiglipSpec, *, pretrained: bool, weights_root: str | Path | None) -> Tokenizer:
    """The text tokenizer the SigLIP spec asks for; random-init models (``pretrained=False``) use bytes."""
    if spec.tokenizer == "bytes" or not pretrained:
        return ByteTokenizer(length=spec.text_length)
    if not spec.pretrained:
        raise CheckpointError("siglip.tokenizer 'pretrained' needs siglip.pretrained (a hub id or directory)")
    path = resolve_pretrained(spec.pretrained, what="SigLIP tokenizer", weights_root=weights_root)
    return PretrainedTokenizer(path, length=spec.text_length)

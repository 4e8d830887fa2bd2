"""SAM 2.1 from transformers (``Sam2Model``): built at random init from config kwargs or loaded from local weights.

SigLIP2's fixed-resolution models are transformers ``SiglipModel``s; :func:`rsrs.model.backbones.build_siglip` builds
them (with the vision pooling head, which the official model keeps).
"""

from __future__ import annotations

import copy
from pathlib import Path

from transformers import Sam2Config, Sam2Model

from rsrs.model.rsrefseg2.config import Sam2Spec
from rsrs.model.rsrefseg2.sam2_convert import apply_meta_sam2
from rsrs.model.weights import resolve_pretrained

_ATTN = "sdpa"


def sam2_config(spec: Sam2Spec) -> Sam2Config:
    """Sam2Config from the spec (copies of its dicts: transformers writes model types into the ones it is given)."""
    vision = copy.deepcopy(spec.vision)
    if isinstance(vision.get("backbone_config"), dict):  # some transformers versions need the type named
        vision["backbone_config"].setdefault("model_type", "sam2_hiera_det_model")
    return Sam2Config(
        vision_config=vision,
        prompt_encoder_config=copy.deepcopy(spec.prompt_encoder),
        mask_decoder_config=copy.deepcopy(spec.mask_decoder),
    )


def build_sam2(spec: Sam2Spec, *, pretrained: bool, weights_root: str | Path | None) -> Sam2Model:
    """Sam2Model from a transformers directory (or hub id in the local cache), Meta's ``sam2.1_hiera_*.pt``, or at
    random init."""
    if pretrained and spec.pretrained:
        path = resolve_pretrained(spec.pretrained, what="SAM 2", weights_root=weights_root)
        if path.is_file():  # Meta's original checkpoint (sam2.1_hiera_large.pt)
            model = Sam2Model._from_config(sam2_config(spec), attn_implementation=_ATTN)
            apply_meta_sam2(model, path)
            return model
        return Sam2Model.from_pretrained(str(path), attn_implementation=_ATTN)
    return Sam2Model._from_config(sam2_config(spec), attn_implementation=_ATTN)

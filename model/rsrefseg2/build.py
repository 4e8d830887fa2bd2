"""Building RSRefSeg 2 from its config: backbones (pretrained or random init) -> prompter -> head -> LoRA."""

from __future__ import annotations

from pathlib import Path

from rsrs.model.backbones import build_siglip
from rsrs.model.lora import apply_lora
from rsrs.model.rsrefseg2.backbones import build_sam2
from rsrs.model.rsrefseg2.config import RSRefSeg2Config
from rsrs.model.rsrefseg2.model import RSREFSEG2_TRAINABLE, ContrastiveHead, RSRefSeg2
from rsrs.model.rsrefseg2.prompter import CascadedPrompter
from rsrs.model.tokenizer import build_tokenizer


def build_rsrefseg2(config: RSRefSeg2Config, *, pretrained: bool, weights_root: str | Path | None) -> RSRefSeg2:
    """RSRefSeg 2 with LoRA injected, on the current (default) device; the caller seeds and marks the trained set."""
    sam2 = build_sam2(config.sam2, pretrained=pretrained, weights_root=weights_root)
    siglip = build_siglip(config.siglip, pretrained=pretrained, weights_root=weights_root, vision_head=True)
    vision = siglip.config.vision_config
    spec = config.prompter
    prompter = CascadedPrompter(
        text_dim=siglip.config.text_config.hidden_size,
        image_dim=vision.hidden_size,
        prompt_dim=sam2.config.prompt_encoder_config.hidden_size,
        image_grid=vision.image_size // vision.patch_size,
        num_queries=spec.num_queries,
        num_prompts=spec.num_prompts,
        num_heads=spec.num_heads,
        mlp_dim=spec.mlp_dim,
        internal_dim=spec.internal_dim,
        query_operations=spec.query_operations,
        image_operations=spec.image_operations,
        prompt_operations=spec.prompt_operations,
        query_depth=spec.query_depth,
        image_depth=spec.image_depth,
        prompt_depth=spec.prompt_depth,
    )
    tokenizer = build_tokenizer(
        config.siglip, pretrained=pretrained, weights_root=weights_root, padding=config.siglip.padding
    )
    model = RSRefSeg2(
        sam2=sam2, siglip=siglip, prompter=prompter, decode_head=ContrastiveHead(), tokenizer=tokenizer, config=config
    )
    lora = config.lora
    apply_lora(model, targets=RSREFSEG2_TRAINABLE.lora_targets, r=lora.r, alpha=lora.alpha, dropout=lora.dropout)
    return model

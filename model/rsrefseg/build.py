"""Building RSRefSeg from its config: backbones (pretrained or seeded random init) -> prompter -> LoRA."""

from __future__ import annotations

from pathlib import Path

from rsrs.model.backbones import build_siglip
from rsrs.model.lora import apply_lora
from rsrs.model.rsrefseg.config import RSRefSegConfig
from rsrs.model.rsrefseg.model import RSREFSEG_TRAINABLE, RSRefSeg
from rsrs.model.rsrefseg.prompter import AttnPrompter
from rsrs.model.rsrefseg.sam import build_sam
from rsrs.model.tokenizer import build_tokenizer


def build_rsrefseg(config: RSRefSegConfig, *, pretrained: bool, weights_root: str | Path | None) -> RSRefSeg:
    """RSRefSeg with LoRA injected, on the current (default) device; the caller seeds and marks the trained set."""
    siglip = build_siglip(config.siglip, pretrained=pretrained, weights_root=weights_root)
    sam = build_sam(config.sam, pretrained=pretrained, weights_root=weights_root)
    prompter = AttnPrompter(
        feature_dim=siglip.config.vision_config.hidden_size,
        prompt_dim=sam.config.prompt_encoder_config.hidden_size,
        norm_groups=config.prompter.norm_groups,
        position_grid=config.prompter.position_grid,
    )
    tokenizer = build_tokenizer(config.siglip, pretrained=pretrained, weights_root=weights_root)
    model = RSRefSeg(siglip=siglip, sam=sam, prompter=prompter, tokenizer=tokenizer, config=config)
    lora = config.lora
    apply_lora(model, targets=RSREFSEG_TRAINABLE.lora_targets, r=lora.r, alpha=lora.alpha, dropout=lora.dropout)
    return model

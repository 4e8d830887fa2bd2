"""The RSRefSeg model configuration (``architecture: rsrefseg``, the default): SigLIP, SAM, the AttnPrompter."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from rsrs.core.schema import StrictModel
from rsrs.model.config import LoraSpec, TrainableMode


class SiglipSpec(StrictModel):
    """SigLIP (image + text) backbone: its transformers config and where its weights come from."""

    pretrained: str | None = Field(
        None, description="hub id or local directory of a SiglipModel; None builds at random init"
    )
    vision: dict[str, Any] = Field(default_factory=dict, description="SiglipVisionConfig kwargs")
    text: dict[str, Any] = Field(default_factory=dict, description="SiglipTextConfig kwargs")
    tokenizer: Literal["pretrained", "bytes"] = Field(
        "pretrained",
        description="'pretrained' loads SigLIP's tokenizer beside the weights; 'bytes' is UTF-8 bytes",
    )
    text_length: int = Field(64, gt=1, description="tokens per query after padding (SigLIP's position limit)")
    text_pooling: Literal["last", "eos"] = Field(
        "last",
        description="'last': SigLIP's own pooled feature, the last position (padding, attending to every token), "
        "as pretrained SigLIP was trained; 'eos': the end-of-text token, padding masked out of attention "
        "(for text encoders trained from random init, where padding dilutes the pooled feature)",
    )


class SamSpec(StrictModel):
    """SAM backbone: transformers SamConfig parts and a hub id, local directory or Meta .pth checkpoint."""

    pretrained: str | None = None
    vision: dict[str, Any] = Field(default_factory=dict, description="SamVisionConfig kwargs")
    prompt_encoder: dict[str, Any] = Field(default_factory=dict, description="SamPromptEncoderConfig kwargs")
    mask_decoder: dict[str, Any] = Field(default_factory=dict, description="SamMaskDecoderConfig kwargs")


class PrompterSpec(StrictModel):
    """AttnPrompter settings (paper eq. 3-4); channel width follows SAM's prompt dimension."""

    norm_groups: int = Field(32, gt=0, description="GroupNorm groups (works at batch size 1 and under DDP)")
    position_grid: int = Field(
        0,
        ge=0,
        description="side of a coarse map, read from the pooled query, added to each patch's activation logit "
        "(0: off, the paper's prompter). Not in the paper: there the query weighs a patch only by what it shows, "
        "so 'the leftmost building' and 'the rightmost building' light up the same buildings",
    )


class RSRefSegConfig(StrictModel):
    """Everything needed to rebuild one RSRefSeg model; stored inside every checkpoint."""

    name: str
    description: str = ""
    architecture: Literal["rsrefseg"] = "rsrefseg"
    siglip: SiglipSpec
    sam: SamSpec
    prompter: PrompterSpec = Field(default_factory=PrompterSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    trainable: TrainableMode = Field(
        "lora",
        description="'lora': LoRA + prompter + SAM prompt encoder/decoder + SigLIP logit scale/bias (reference); "
        "'all': every parameter (for models trained from random init, such as 'demo'); "
        "'all_but_image_encoders': 'all' with both image encoders frozen (their features can then be cached)",
    )
    init_seed: int = Field(0, description="seed for random-init weights, so a rebuilt base equals the trained one")
    checkpoint: str | None = Field(
        None,
        description="trained weights applied after building (a preset's shipped file, relative to configs/)",
    )

    @property
    def mask_backbone(self) -> SamSpec:
        """The backbone that draws the masks (SAM)."""
        return self.sam

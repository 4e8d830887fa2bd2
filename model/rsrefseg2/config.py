"""The RSRefSeg 2 model configuration (``architecture: rsrefseg2``): SAM 2.1, SigLIP2 and the cascaded prompter.

Defaults are the official configuration (``KyanChen/RSRefSeg2``, ``configs_RSRefSeg2/rrsisd_training.py``): three
text queries per set, two blocks of each of the three kinds, nine 256-d prompts, 8 heads, MLP and attention width
512, the operation orders as listed there, LoRA r=16 alpha=16.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from rsrs.core.schema import StrictModel
from rsrs.model.config import LoraSpec, TrainableMode

#: Suffixes of the authors' released checkpoints (rrsisd.pth, ...) and Meta's SAM 2 files (rsrefseg2.official).
OFFICIAL_SUFFIXES = (".pth", ".pt")

QUERY_OPERATIONS = [
    "self_attn_query_query1", "norm_query1_1",
    "self_attn_query_query2", "norm_query2_1",
    "cross_attn_query_text_query1_text", "norm_query1_2", "mlp_query1_2", "norm_query1_3",
    "cross_attn_query_text_query2_text", "norm_query2_2", "mlp_query2_2", "norm_query2_3",
    "cross_attn_query_query_query1_query2", "norm_query1_4", "mlp_query1_3", "norm_query1_5",
    "cross_attn_query_query_query2_query1", "norm_query2_4", "mlp_query2_3", "norm_query2_5",
]  # fmt: skip
IMAGE_OPERATIONS = [
    "self_attn_text_text_1", "norm_text_1",
    "cross_attn_img_text_1", "norm_img_1", "mlp_img_1", "norm_img_2",
]  # fmt: skip
PROMPT_OPERATIONS = [
    "self_attn_text_1", "norm_text_1",
    "cross_attn_img_text_1", "norm_img_1", "mlp_img_1", "norm_img_2",
    "self_attn_prompt_1", "norm_prompt_1",
    "cross_attn_prompt_text_1", "norm_prompt_2", "mlp_prompt_2", "norm_prompt_3",
    "cross_attn_prompt_img_1", "norm_prompt_4", "mlp_prompt_3", "norm_prompt_5",
]  # fmt: skip


class Sam2Spec(StrictModel):
    """SAM 2.1: transformers ``Sam2Config`` parts and where its weights come from."""

    pretrained: str | None = Field(
        None, description="hub id or local directory of a transformers Sam2Model; None builds at random init"
    )
    vision: dict[str, Any] = Field(
        default_factory=dict, description="Sam2VisionConfig kwargs (backbone_config: Sam2HieraDetConfig kwargs)"
    )
    prompt_encoder: dict[str, Any] = Field(default_factory=dict, description="Sam2PromptEncoderConfig kwargs")
    mask_decoder: dict[str, Any] = Field(default_factory=dict, description="Sam2MaskDecoderConfig kwargs")


class Siglip2Spec(StrictModel):
    """SigLIP2 (fixed resolution, a transformers SiglipModel): config, weights, tokenizer and pixel statistics."""

    pretrained: str | None = Field(
        None, description="hub id or local directory of the SigLIP2 model; None builds at random init"
    )
    vision: dict[str, Any] = Field(default_factory=dict, description="SiglipVisionConfig kwargs")
    text: dict[str, Any] = Field(default_factory=dict, description="SiglipTextConfig kwargs")
    tokenizer: Literal["pretrained", "bytes"] = Field(
        "pretrained", description="'pretrained': the model's (Gemma) tokenizer beside the weights; 'bytes': UTF-8"
    )
    text_length: int = Field(128, gt=1, description="truncation length in tokens (the official 128)")
    padding: Literal["longest", "max_length"] = Field(
        "longest",
        description="'longest': queries padded to the longest one encoded together (official); 'max_length': to "
        "text_length, so a query's features do not depend on the others",
    )
    image_mean: tuple[float, float, float] = Field((0.5, 0.5, 0.5), description="SigLIP2 processor mean")
    image_std: tuple[float, float, float] = Field((0.5, 0.5, 0.5), description="SigLIP2 processor std")


class CascadedPrompterSpec(StrictModel):
    """Cascaded prompter hyper-parameters (official values as defaults); widths follow the backbones."""

    num_queries: int = Field(3, gt=0, description="text queries per set (two sets, initialised by pooling the text)")
    num_prompts: int = Field(9, gt=0, description="learnable sparse prompts for SAM 2's mask decoder")
    num_heads: int = Field(8, gt=0)
    mlp_dim: int = Field(512, gt=0)
    internal_dim: int = Field(512, gt=0, description="q/k/v width of every attention")
    query_depth: int = Field(2, ge=0, description="two-query/text blocks")
    image_depth: int = Field(2, ge=0, description="queries-1-to-image blocks")
    prompt_depth: int = Field(2, ge=0, description="prompt/queries-2/image blocks")
    query_operations: list[str] = Field(default_factory=lambda: list(QUERY_OPERATIONS))
    image_operations: list[str] = Field(default_factory=lambda: list(IMAGE_OPERATIONS))
    prompt_operations: list[str] = Field(default_factory=lambda: list(PROMPT_OPERATIONS))


class RSRefSeg2Config(StrictModel):
    """Everything needed to rebuild one RSRefSeg 2 model; stored inside every checkpoint."""

    name: str
    description: str = ""
    architecture: Literal["rsrefseg2"] = "rsrefseg2"
    sam2: Sam2Spec
    siglip: Siglip2Spec
    prompter: CascadedPrompterSpec = Field(default_factory=CascadedPrompterSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    trainable: TrainableMode = Field(
        "lora",
        description="'lora': LoRA + prompter + SAM 2 prompt encoder/mask decoder/no-memory embedding + SigLIP logit "
        "scale/bias + the contrastive head (official); 'all'; 'all_but_image_encoders'",
    )
    init_seed: int = Field(0, description="seed for random-init weights, so a rebuilt base equals the trained one")
    checkpoint: str | None = Field(None, description="trained weights applied after building (relative to configs/)")

    @property
    def mask_backbone(self) -> Sam2Spec:
        """The backbone that draws the masks (SAM 2.1)."""
        return self.sam2

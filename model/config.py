"""The model configuration: one pydantic document per preset, validated once and handed to the builders.

A config says which backbones to build (their transformers config kwargs, so real-size models can be built at
random init without a hub), where their pretrained weights come from, and how LoRA and training apply.
Configs stop at the builder functions (STYLE rule 2): modules receive plain keyword arguments.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rsrs.model.errors import ConfigError

if TYPE_CHECKING:
    from rsrs.model.rsrefseg2.config import RSRefSeg2Config

_Schema = TypeVar("_Schema", bound=BaseModel)
TrainableMode = Literal["lora", "all", "all_but_image_encoders"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiglipSpec(_Strict):
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


class SamSpec(_Strict):
    """SAM backbone: transformers SamConfig parts and a hub id, local directory or Meta .pth checkpoint."""

    pretrained: str | None = None
    vision: dict[str, Any] = Field(default_factory=dict, description="SamVisionConfig kwargs")
    prompt_encoder: dict[str, Any] = Field(default_factory=dict, description="SamPromptEncoderConfig kwargs")
    mask_decoder: dict[str, Any] = Field(default_factory=dict, description="SamMaskDecoderConfig kwargs")


class PrompterSpec(_Strict):
    """AttnPrompter settings (paper eq. 3-4); channel width follows SAM's prompt dimension."""

    norm_groups: int = Field(32, gt=0, description="GroupNorm groups (works at batch size 1 and under DDP)")
    position_grid: int = Field(
        0,
        ge=0,
        description="side of a coarse map, read from the pooled query, added to each patch's activation logit "
        "(0: off, the paper's prompter). Not in the paper: there the query weighs a patch only by what it shows, "
        "so 'the leftmost building' and 'the rightmost building' light up the same buildings",
    )


class LoraSpec(_Strict):
    """LoRA on the backbones (peft); ``r=0`` disables it."""

    r: int = Field(16, ge=0)
    alpha: float = 16.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class ModelConfig(_Strict):
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


def presets_dir() -> Path:
    """The folder of shipped model presets (works after a non-editable install)."""
    return Path(str(resources.files("rsrs.configs"))) / "models"


def validate_config(schema: type[_Schema], data: Any, *, what: str, source: str) -> _Schema:
    """Validate ``data`` against a pydantic schema; the first problem becomes one ConfigError line naming the
    source and the field path (shared by model, training and other YAML configs)."""
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(f"invalid {what} {source}: {where}: {first['msg']}") from None


def parse_model_config(data: dict[str, Any], *, source: str) -> ModelConfig | RSRefSeg2Config:
    """Validate a config mapping against the schema its ``architecture`` names (default 'rsrefseg'); errors name
    the source and the field path in one line."""
    schema: type[BaseModel] = ModelConfig
    if data.get("architecture") == "rsrefseg2":
        from rsrs.model.rsrefseg2.config import RSRefSeg2Config  # builds on this module, so imported on use

        schema = RSRefSeg2Config
    return validate_config(schema, data, what="model config", source=source)


def load_model_config(path: str | Path) -> ModelConfig | RSRefSeg2Config:
    """Read a model config YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"model config {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"model config {path} must be a mapping of keys, got {type(data).__name__}")
    return parse_model_config(data, source=str(path))

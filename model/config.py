"""Model configurations: one pydantic document per preset, validated once and handed to the builders.

A config says which architecture to build (``architecture``: each has its schema in its folder, e.g.
:mod:`rsrs.model.rsrefseg.config`), which backbones (their transformers config kwargs, so real-size models can be
built at random init without a hub), where their pretrained weights come from, and how LoRA and training apply.
Configs stop at the builder functions (STYLE rule 2): modules receive plain keyword arguments. This module holds
what every architecture shares (LoRA, the trained sets) and the presets shipped in configs/models/.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from rsrs.core.errors import ConfigError
from rsrs.core.schema import StrictModel, load_yaml_mapping, validate

if TYPE_CHECKING:
    from rsrs.model.architectures import AnyModelConfig

TrainableMode = Literal["lora", "all", "all_but_image_encoders"]


class LoraSpec(StrictModel):
    """LoRA on the backbones (peft); ``r=0`` disables it."""

    r: int = Field(16, ge=0)
    alpha: float = 16.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


def presets_dir() -> Path:
    """The folder of shipped model presets (works after a non-editable install)."""
    return Path(str(resources.files("rsrs.configs"))) / "models"


def list_models() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def get_model_config(name: str) -> AnyModelConfig:
    """The config of a shipped preset."""
    path = presets_dir() / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(
            f"unknown model preset '{name}'; choose one of {', '.join(list_models())} (see `rsrs models`)"
        )
    return load_model_config(path)


def parse_model_config(data: dict[str, Any], *, source: str) -> AnyModelConfig:
    """Validate a config mapping against the schema its ``architecture`` names (default 'rsrefseg'); errors name
    the source and the key in one line."""
    from rsrs.model.architectures import architecture  # the schemas build on this module: imported on use

    schema = architecture(str(data.get("architecture", "rsrefseg")), source=f"model config {source}").config
    return validate(schema, data, source=f"model config {source}")


def load_model_config(path: str | Path) -> AnyModelConfig:
    """Read a model config YAML file."""
    return parse_model_config(load_yaml_mapping(path, what="model config"), source=str(path))

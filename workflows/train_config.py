"""The training configuration (``rsrs train CONFIG.yaml``), validated with pydantic; unknown keys are errors."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rsrs.core.errors import ConfigError
from rsrs.core.schema import StrictModel, load_yaml_mapping, resolve_path, validate
from rsrs.model.rsrefseg2.config import OFFICIAL_SUFFIXES


class TrainModel(StrictModel):
    """Which model to fine-tune: a preset or a model config file, optionally starting from a checkpoint."""

    preset: str | None = None
    config: str | None = None
    init_checkpoint: str | None = Field(
        None, description="start from these weights: a .safetensors from `rsrs train`, or a released RSRefSeg 2 .pth"
    )
    trainable: Literal["lora", "all", "all_but_image_encoders"] | None = Field(
        None,
        description="override the model's trained set: 'all' for models without pretrained backbones; "
        "'all_but_image_encoders' to fine-tune text, prompter and mask decoder on fixed image features",
    )
    resolve_paths = field_validator("config", "init_checkpoint")(resolve_path)

    @model_validator(mode="after")
    def _one_source(self) -> TrainModel:
        if (self.preset is None) == (self.config is None):
            raise ValueError("give exactly one of model.preset or model.config")
        init = self.init_checkpoint
        if init is not None and not init.endswith((".safetensors", *OFFICIAL_SUFFIXES)):
            raise ValueError(
                f"init_checkpoint {init!r} is neither a .safetensors checkpoint written by `rsrs train` nor a released "
                f"RSRefSeg 2 file ({', '.join(OFFICIAL_SUFFIXES)})"
            )
        return self


class TrainData(StrictModel):
    """Dataset on disk (DESIGN §5 formats) and how samples are batched."""

    format: Literal["manifest", "rrsisd", "refsegrs", "risbench"] = "manifest"
    path: str
    train_split: str = "train"
    val_split: str | None = "val"
    image_size: int = Field(512, gt=0, description="samples are resized to image_size x image_size for batching")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes")
    max_val_samples: int | None = Field(None, gt=0, description="validate on the first N samples only")
    cache_image_features: bool = Field(
        False,
        description="compute each training image's features once (needs model.trainable: all_but_image_encoders "
        "or another set that freezes both image encoders); steps then skip the image encoders",
    )
    resolve_paths = field_validator("path")(resolve_path)


class Optim(StrictModel):
    """AdamW with linear warm-up then cosine decay (reference: lr 1e-4, weight decay 0.05)."""

    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = Field(8, gt=0, description="samples per step per process")
    max_steps: int = Field(1000, gt=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)


class Loss(StrictModel):
    """BCE + Dice weights (reference 5 and 5)."""

    bce_weight: float = 5.0
    dice_weight: float = 5.0


class TrainConfig(StrictModel):
    """A whole training run."""

    model: TrainModel
    data: TrainData
    optim: Optim = Field(default_factory=Optim)
    loss: Loss = Field(default_factory=Loss)
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out_dir: str = Field("runs/train", validate_default=True)  # relative: to the config file's folder
    checkpoint_every: int = Field(500, gt=0, description="steps between checkpoints (and resume points)")
    val_every: int = Field(500, gt=0, description="steps between validations")
    log_every: int = Field(10, gt=0)
    seed: int = 0
    resolve_paths = field_validator("out_dir")(resolve_path)


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a training config; relative paths resolve against the config file's folder."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"training config {path} does not exist; see configs/train/ for examples")
    return validate(
        TrainConfig,
        load_yaml_mapping(path, what="training config"),
        source=f"training config {path}",
        context={"base_dir": path.resolve().parent},
    )

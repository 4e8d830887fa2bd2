"""Model presets and the builder: ``list_models``, ``get_model_config``, ``build_model``, ``load_model``.

A model is named by a preset (``configs/models/<name>.yaml``), a model config file, or a checkpoint file (which
carries its config). Building follows one order: backbones (pretrained or seeded random init) -> prompter ->
LoRA -> trainable set -> checkpoint tensors -> device/dtype.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from rsrs.core.errors import ConfigError
from rsrs.model.architectures import AnyModelConfig, architecture
from rsrs.model.checkpoint import apply_checkpoint
from rsrs.model.config import presets_dir
from rsrs.model.fourier_features import cast_keeping_fourier_float32
from rsrs.model.lora import mark_trainable
from rsrs.model.rsrefseg2.config import OFFICIAL_SUFFIXES
from rsrs.model.rsrefseg2.official import load_official_checkpoint
from rsrs.model.segmenter import PairwiseSegmenter
from rsrs.model.spec import resolve_model_spec


def _shipped_checkpoint(config: AnyModelConfig) -> Path | None:
    return presets_dir() / config.checkpoint if config.checkpoint else None


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Deterministic random init on ``device`` without disturbing the caller's RNG state."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def build_model(
    config: AnyModelConfig,
    *,
    device: str | torch.device = "cpu",
    pretrained: bool = True,
    weights_dir: str | Path | None = None,
) -> PairwiseSegmenter:
    """Construct the model a config describes (its ``architecture``), with LoRA and the trainable set applied (no
    checkpoint tensors).

    ``device="meta"`` builds without memory (for shapes and parameter counts); ``pretrained=False`` builds the
    backbones at seeded random init instead of loading their weights.
    """
    device = torch.device(device)
    with _seeded(config.init_seed, device), torch.device(device):
        model = architecture(config.architecture).builder()(config, pretrained=pretrained, weights_root=weights_dir)
    mark_trainable(model, mode=config.trainable)
    return model.to(device)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is visible; use device: auto or cpu")
    return device


def load_model(
    spec: str | Path | AnyModelConfig,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    pretrained: bool = True,
    weights_dir: str | Path | None = None,
) -> PairwiseSegmenter:
    """A ready-to-use model in eval mode: preset name, model config path, or checkpoint path.

    ``dtype="auto"`` gives bf16 weights on CUDA (inference) and float32 on CPU; SAM's positional-encoding matrix
    stays float32 in any dtype (rsrs.model.fourier_features).
    """
    config, checkpoint = resolve_model_spec(spec)
    device = resolve_device(device)
    if device.type == "meta":  # shapes and counts only: nothing to load
        return build_model(config, device=device, pretrained=False).eval()
    # Built on CPU so that seeded random init is the same on every machine; then moved.
    model = build_model(config, device="cpu", pretrained=pretrained, weights_dir=weights_dir)
    for path in (_shipped_checkpoint(config), checkpoint):
        if path is not None:
            (load_official_checkpoint if path.suffix in OFFICIAL_SUFFIXES else apply_checkpoint)(model, path)
    if dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return cast_keeping_fourier_float32(model, device=device, dtype=dtype).eval()

"""Checkpoints: safetensors of the trained parameters only, with the model config in the file's metadata.

Loading rebuilds the base model from its config (pretrained backbones or seeded random init) and applies the
stored tensors, so a fine-tune of rsrefseg-b is a few tens of MB instead of the backbones' 4 GB.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open

from rsrs.core.errors import CheckpointError
from rsrs.core.files import atomic_path
from rsrs.model.config import parse_model_config

if TYPE_CHECKING:
    import torch
    from torch import nn

    from rsrs.model.architectures import AnyModelConfig

CONFIG_KEY = "rsrs_model_config"
FORMAT_KEY = "rsrs_checkpoint_format"
FORMAT = "1"


def trained_state_dict(model: nn.Module, *, also: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """The parameters that training changes (``requires_grad``) and those named in ``also``, detached, by name;
    plus the persistent buffers of modules with trained parameters (BatchNorm's running statistics, which training
    updates too)."""
    tensors = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad or name in also}
    persistent = model.state_dict(keep_vars=True).keys()
    for prefix, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            for name, buffer in module.named_buffers(prefix=prefix, recurse=False):
                if name in persistent:
                    tensors[name] = buffer.detach()
    return tensors


def checkpoint_names(path: str | Path) -> list[str]:
    """The names of the tensors a checkpoint holds."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return list(f.keys())


def save_checkpoint(model: nn.Module, path: str | Path, *, config: AnyModelConfig, also: Collection[str] = ()) -> Path:
    """Write the trained parameters and ``config`` atomically to ``path`` (a .safetensors file).

    ``also`` names frozen parameters to store as well: those the config cannot rebuild, such as weights a run
    started from (an init checkpoint) and now keeps frozen; without them the file would load with them at init.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().cpu() for k, v in trained_state_dict(model, also=also).items()}
    metadata = {CONFIG_KEY: config.model_dump_json(), FORMAT_KEY: FORMAT}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_checkpoint_config(path: str | Path) -> AnyModelConfig:
    """The model config stored in a checkpoint."""
    try:
        with safe_open(str(path), framework="numpy") as f:  # the metadata only: no torch needed
            metadata = f.metadata() or {}
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({err})") from None
    if CONFIG_KEY not in metadata:
        raise CheckpointError(f"{path} has no rsrs model config; was it written by `rsrs train`?")
    return parse_model_config(json.loads(metadata[CONFIG_KEY]), source=str(path))


def apply_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Copy a checkpoint's tensors into ``model``; every stored tensor must match a parameter or buffer, and every
    trained parameter must be stored."""
    import torch

    params = dict(model.named_parameters()) | dict(model.named_buffers())
    with safe_open(str(path), framework="pt", device="cpu") as f:
        names = list(f.keys())
        unknown = [n for n in names if n not in params]
        if unknown:
            raise CheckpointError(f"{path} holds tensors the model does not have, e.g. '{unknown[0]}'")
        missing = [n for n, p in params.items() if p.requires_grad and n not in names]
        if missing:
            raise CheckpointError(f"{path} lacks trained parameters of this model, e.g. '{missing[0]}'")
        with torch.no_grad():
            for name in names:
                tensor = f.get_tensor(name)
                if tensor.shape != params[name].shape:
                    raise CheckpointError(
                        f"{path}: '{name}' has shape {tuple(tensor.shape)}, model expects {tuple(params[name].shape)}"
                    )
                params[name].copy_(tensor)

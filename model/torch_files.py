"""Reading PyTorch pickle checkpoints (``.pt`` / ``.pth``) without running code from them, and loading a
converted state dict into a model with one clear error.

``torch.load(weights_only=True)`` reads tensors and plain containers only. Training frameworks also pickle their
own objects beside the weights (mmengine's ``meta`` and ``message_hub``: history buffers, numpy scalars), which
that safe load refuses as a whole. For those files a second, restricted unpickler rebuilds tensors and ordered
dicts and turns every other object into an inert placeholder: no class is imported, no function called, so the
state dict comes back and the rest is dropped.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from rsrs.core.errors import CheckpointError

_REBUILDERS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
}


class _Inert:
    """Stands in for any object the restricted unpickler does not rebuild; accepts and ignores everything."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        """Ignored (pickle's APPEND on a placeholder)."""

    def extend(self, values: Any) -> None:
        """Ignored (pickle's APPENDS on a placeholder)."""


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _REBUILDERS:
            return super().find_class(module, name)
        return _Inert


def _inert_load(file: Any, **kwargs: Any) -> Any:
    return _InertUnpickler(file, **kwargs).load()


_INERT_PICKLE = SimpleNamespace(Unpickler=_InertUnpickler, load=_inert_load, __name__="rsrs_inert_pickle")


def read_torch_file(path: str | Path) -> Any:
    """The object pickled in ``path``, tensors on the CPU (memory-mapped for zip-format files).

    Tries ``weights_only=True`` first; when that refuses the file's extra objects, reads it again with the
    restricted unpickler. Raises :class:`CheckpointError` when neither can read it (not a PyTorch file).
    """
    path = Path(path)
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as safe_err:  # noqa: BLE001 - torch raises several types for a file it cannot read
        try:
            return torch.load(str(path), map_location="cpu", weights_only=False, mmap=mmap, pickle_module=_INERT_PICKLE)
        except Exception:  # noqa: BLE001 - same; the first error says more
            first = str(safe_err).strip().splitlines()[0] if str(safe_err).strip() else type(safe_err).__name__
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({first[:200]})") from None


def tensor_mapping(value: Any, *, path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """``value`` as a dict of tensors by name, or :class:`CheckpointError` saying ``path`` is not ``what``."""
    if not isinstance(value, Mapping) or not value:
        raise CheckpointError(f"{path} holds no state dict of tensors; is it {what}?")
    bad = next((k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: entry '{bad}' is not a named tensor; is it {what}?")
    return dict(value)


def read_meta_state(path: str | Path, *, what: str) -> dict[str, torch.Tensor]:
    """The state dict of a Meta checkpoint (bare, or wrapped as ``{"model": ...}`` as SAM 2 ships it)."""
    state = read_torch_file(path)
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    return tensor_mapping(state, path=path, what=what)


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], *, path: str | Path, hint: str) -> None:
    """``model.load_state_dict(state, strict=True)``; a missing, extra or mis-shaped tensor becomes one
    :class:`CheckpointError` line naming ``path`` and the first problem, followed by ``hint``."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).strip().splitlines()]
        first = lines[1] if len(lines) > 1 else lines[0]
        raise CheckpointError(f"checkpoint {path} does not fit the model ({first}); {hint}") from None

"""The RSRefSeg 2 authors' released checkpoints (``KyanChen/RSRefSeg2``: rrsisd.pth, refsegrs.pth, risbench.pth).

Each is an mmengine checkpoint, ``{"state_dict": ...}``, of the official ``RefSegEncoderDecoder``:

- ``backbone.model.``: Meta's SAM 2.1 image path (``SAM2Base`` with its video-only modules deleted), its image
  encoder wrapped by peft (``image_encoder.base_model.model.``, LoRA on the trunk's ``attn.qkv``/``attn.proj``
  and the neck convolutions);
- ``clip_vision_encoder.base_model.model.model.`` / ``clip_text_encoder.base_model.model.model.``: the
  transformers SigLIP (2) vision and text models, each wrapped by peft; the text wrapper also holds SigLIP's
  ``logit_scale`` / ``logit_bias``;
- ``prompter.``: the cascaded prompter, whose names ours keep; ``decode_head.``: the loss-only logit scales
  (two of the four are unused, see :data:`UNUSED`).

:func:`official_names` is the one name table (ours -> official), built from our model's own keys; loading and
saving both read it, so the round trip is exact. A file may hold the whole model, or only what training changed
(:func:`is_trained`); the rest then comes from the base backbones the model was built with.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rsrs.core.errors import CheckpointError, ConfigError
from rsrs.model.rsrefseg2 import sam2_convert
from rsrs.model.rsrefseg2.config import OFFICIAL_SUFFIXES
from rsrs.model.torch_files import read_torch_file

log = logging.getLogger(__name__)

PRESET = "rsrefseg2-l"  # every released file: SAM 2.1 Hiera-L + SigLIP2 so400m/16@512 (configs_RSRefSeg2/*.py)
SAM2, IMAGE_ENCODER = "backbone.model.", "backbone.model.image_encoder.base_model.model."
VISION, TEXT = "clip_vision_encoder.base_model.model.model.", "clip_text_encoder.base_model.model.model."
TEXT_WRAPPER = "clip_text_encoder.base_model.model."
_OURS_TO_OFFICIAL = [  # (our prefix, official prefix) outside SAM 2, whose names change inside too
    ("siglip.vision_model.", VISION),
    ("siglip.text_model.", TEXT),
    ("siglip.logit_scale", TEXT_WRAPPER + "logit_scale"),
    ("siglip.logit_bias", TEXT_WRAPPER + "logit_bias"),
    ("prompter.", "prompter."),
    ("decode_head.", "decode_head."),
]
UNUSED = {
    "decode_head.logit_scale1": "a logit scale of official loss terms its configuration leaves off",
    "decode_head.logit_bias1": "a logit bias of official loss terms its configuration leaves off",
}
"""Official keys that have no counterpart in our model, and why they are not needed."""

_LORA = re.compile(r"^(.+)\.(base_layer|lora_[AB]\.default)\.(weight|bias)$")
_TRAINED = re.compile(
    r"(\.lora_[AB]\.|^prompter\.|^decode_head\.|^backbone\.model\.sam_mask_decoder\."
    r"|^backbone\.model\.sam_prompt_encoder\.(?!pe_layer\.)|^backbone\.model\.no_mem_embed$"
    r"|^clip_text_encoder\.base_model\.model\.logit_(scale|bias)$)"
)


def is_trained(official_key: str) -> bool:
    """Whether official training changed this tensor: LoRA, the prompter (with its BatchNorm statistics), SAM 2's
    prompt encoder and mask decoder and no-memory embedding, SigLIP's logit scale/bias, the decode head."""
    return bool(_TRAINED.search(official_key))


def _sam2_names(keys: list[str]) -> dict[str, list[str]]:
    """Our ``sam2.`` keys -> official keys, through Meta's SAM 2 names; peft's LoRA parts are carried over."""
    plain = {}  # our key -> (transformers key of the wrapped layer's own tensor, LoRA part or "")
    for key in keys:
        name = key.removeprefix("sam2.")
        m = _LORA.match(name)
        plain[key] = (f"{m.group(1)}.{m.group(3)}", f"{m.group(2)}.") if m else (name, "")
    meta = sam2_convert.meta_names({hf for hf, _ in plain.values()})
    out = {}
    for key, (hf, lora) in plain.items():
        names = []
        for name in meta[hf]:
            if lora:  # the wrapped layer's own tensor 'x.weight' is peft's 'x.base_layer.weight', 'x.lora_A...'
                module, leaf = name.rsplit(".", 1)
                name = f"{module}.{lora}{leaf}"
            image = name.startswith("image_encoder.")
            names.append(IMAGE_ENCODER + name.removeprefix("image_encoder.") if image else SAM2 + name)
        out[key] = names
    return out


def official_names(keys: Iterable[str]) -> dict[str, list[str]]:
    """The name table: each of our state-dict keys -> the official key(s) holding it (several: stacked along
    dim 0). A key outside the official model raises ``KeyError``."""
    keys = list(keys)
    table = _sam2_names([k for k in keys if k.startswith("sam2.")])
    for key in keys:
        if key.startswith("sam2."):
            continue
        ours, official = next(((o, f) for o, f in _OURS_TO_OFFICIAL if key.startswith(o)), (None, None))
        if ours is None:
            raise KeyError(f"'{key}' has no counterpart in the official RSRefSeg 2 model")
        table[key] = [official + key.removeprefix(ours)]
    return table


def official_state_dict(model: nn.Module, *, trained_only: bool = False) -> dict[str, torch.Tensor]:
    """Our model's tensors under the official names (a checkpoint's ``state_dict``): everything, or with
    ``trained_only`` what official training changed (a "slight" file). Of SAM 2's two copies of the Fourier
    matrix, the one the image path uses (``shared_image_embedding``) is written."""
    state = model.state_dict()
    skip = "sam2." + sam2_convert.TIED_POS
    out = {}
    for key, names in official_names(state).items():
        if key == skip:
            continue
        value = state[key].detach()
        out |= dict(zip(names, value.split(1), strict=True)) if len(names) > 1 else {names[0]: value}
    return {k: v for k, v in out.items() if is_trained(k)} if trained_only else out


@dataclass(frozen=True)
class OfficialLoad:
    """What a load took from where: our tensors set from the file, those left as built (the base backbones),
    and the file's keys deliberately not used (see :data:`UNUSED`); ``trained``: those of ``from_file`` that
    official training changed (what a fine-tuning run must keep, as the preset alone rebuilds the rest)."""

    from_file: list[str]
    from_base: list[str]
    unused: list[str]
    trained: list[str]


def read_official_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an official checkpoint, or :class:`CheckpointError` if ``path`` is not one (it must
    hold prompter and SAM 2 mask decoder tensors, which every RSRefSeg 2 training changes)."""
    obj = read_torch_file(path)
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else {}
    keys = [k for k in state if isinstance(k, str)] if isinstance(state, Mapping) else []
    decoder2, decoder1 = SAM2 + "sam_mask_decoder.", SAM2 + "mask_decoder."  # RSRefSeg 2 (Meta SAM 2), 1 (SamModel)
    has = {p: any(k.startswith(p) for k in keys) for p in ("prompter.", decoder2, decoder1)}
    if not (has["prompter."] and has[decoder2]):
        kind = "an RSRefSeg 1 checkpoint" if has[decoder1] else f"found {keys[0]!r}" if keys else "no state dict"
        raise CheckpointError(
            f"{path} is not an RSRefSeg 2 checkpoint ({kind}); give one of KyanChen/RSRefSeg2's files "
            "(rrsisd.pth, refsegrs.pth, risbench.pth)"
        )
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: state_dict entry '{bad}' is not a tensor; is this an RSRefSeg 2 checkpoint?")
    return dict(state)


def is_official_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a ``.pth``/``.pt`` file holding an official RSRefSeg 2 state dict."""
    path = Path(path)
    if path.suffix not in OFFICIAL_SUFFIXES or not path.is_file():
        return False
    try:
        read_official_state(path)
    except CheckpointError:
        return False
    return True


def official_preset(path: str | Path) -> str:
    """The preset an official checkpoint loads into; :class:`ConfigError` if ``path`` does not exist and
    :class:`CheckpointError` if it is not an official RSRefSeg 2 checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; check the path (relative to {Path.cwd()})")
    read_official_state(path)
    return PRESET


def load_official_checkpoint(model: nn.Module, path: str | Path) -> OfficialLoad:
    """Set ``model``'s tensors from an official checkpoint; the file's tensors are cast to ours.

    Every key of the file is used or deliberately unused (:data:`UNUSED`), every shape is checked, and every
    tensor official training changed must be in the file (a "slight" file leaves the frozen base as built).
    Raises :class:`CheckpointError` with one line on the first problem, before any tensor is changed.
    """
    state = read_official_state(path)
    ours = model.state_dict()
    table = official_names(ours)
    claimed = {name for names in table.values() for name in names}
    for key in state:
        if key not in claimed and key not in UNUSED:
            raise CheckpointError(f"{path}: key '{key}' has no place in this model; is the preset {PRESET}?")
    values, from_base = {}, []
    for key, names in table.items():
        present = [n for n in names if n in state]
        if not present:
            if any(is_trained(n) for n in names):
                raise CheckpointError(f"{path} lacks '{names[0]}', which RSRefSeg 2 training changes")
            from_base.append(key)
            continue
        if len(present) < len(names):
            missing = next(n for n in names if n not in state)
            raise CheckpointError(f"{path} lacks '{missing}' (part of our '{key}')")
        value = torch.cat([state[n] for n in names]) if len(names) > 1 else state[names[0]]
        if value.shape != ours[key].shape:
            raise CheckpointError(
                f"{path}: '{names[0]}' has shape {tuple(value.shape)}, the model expects {tuple(ours[key].shape)}; "
                f"is the preset {PRESET}?"
            )
        values[key] = value
    with torch.no_grad():
        for key, value in values.items():
            ours[key].copy_(value)
    unused = sorted(set(state) - claimed)
    log.info(
        "%s: %d tensors from the file, %d from the base backbones, %d unused",
        path,
        len(values),
        len(from_base),
        len(unused),
    )
    trained = sorted(key for key in values if any(is_trained(name) for name in table[key]))
    return OfficialLoad(from_file=sorted(values), from_base=sorted(from_base), unused=unused, trained=trained)

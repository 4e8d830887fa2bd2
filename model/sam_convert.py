"""Meta's original SAM checkpoints (``sam_vit_b_01ec64.pth`` and friends) in transformers' ``SamModel`` layout.

The two layouts differ only in names, and in the decoder's MLP heads, whose linear layers Meta numbers
``layers.0..n-1`` while transformers splits them into ``proj_in`` / ``layers.0..n-3`` / ``proj_out``. Tensors are
passed through unchanged, so the conversion is exact in both directions. One table of name prefixes (``{}`` for a
block index) drives both directions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from rsrs.core.errors import CheckpointError

# (Meta prefix, transformers prefix); "{}" stands for a block index. Longest/most specific first.
_PREFIXES: list[tuple[str, str]] = [
    ("image_encoder.patch_embed.proj.", "vision_encoder.patch_embed.projection."),
    ("image_encoder.pos_embed", "vision_encoder.pos_embed"),
    ("image_encoder.blocks.{}.norm1.", "vision_encoder.layers.{}.layer_norm1."),
    ("image_encoder.blocks.{}.norm2.", "vision_encoder.layers.{}.layer_norm2."),
    ("image_encoder.blocks.{}.attn.", "vision_encoder.layers.{}.attn."),
    ("image_encoder.blocks.{}.mlp.", "vision_encoder.layers.{}.mlp."),
    ("image_encoder.neck.0.", "vision_encoder.neck.conv1."),
    ("image_encoder.neck.1.", "vision_encoder.neck.layer_norm1."),
    ("image_encoder.neck.2.", "vision_encoder.neck.conv2."),
    ("image_encoder.neck.3.", "vision_encoder.neck.layer_norm2."),
    (
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "shared_image_embedding.positional_embedding",
    ),
    ("prompt_encoder.point_embeddings.{}.", "prompt_encoder.point_embed.{}."),
    ("prompt_encoder.not_a_point_embed.", "prompt_encoder.not_a_point_embed."),
    ("prompt_encoder.no_mask_embed.", "prompt_encoder.no_mask_embed."),
    ("prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    ("prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    ("prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    ("prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    ("prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    ("mask_decoder.transformer.layers.{}.norm1.", "mask_decoder.transformer.layers.{}.layer_norm1."),
    ("mask_decoder.transformer.layers.{}.norm2.", "mask_decoder.transformer.layers.{}.layer_norm2."),
    ("mask_decoder.transformer.layers.{}.norm3.", "mask_decoder.transformer.layers.{}.layer_norm3."),
    ("mask_decoder.transformer.layers.{}.norm4.", "mask_decoder.transformer.layers.{}.layer_norm4."),
    ("mask_decoder.transformer.norm_final_attn.", "mask_decoder.transformer.layer_norm_final_attn."),
    ("mask_decoder.transformer.", "mask_decoder.transformer."),
    ("mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    ("mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    ("mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
    ("mask_decoder.iou_token.", "mask_decoder.iou_token."),
    ("mask_decoder.mask_tokens.", "mask_decoder.mask_tokens."),
]
_HEADS = r"mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\."
_META_HEAD = re.compile(rf"^{_HEADS}layers\.(\d+)\.(.+)$")
_HF_HEAD = re.compile(rf"^{_HEADS}(proj_in|proj_out|layers\.\d+)\.(.+)$")
_IGNORED_META_KEYS = {
    "pixel_mean",
    "pixel_std",
}  # non-persistent buffers that some re-saved files still carry
_POS = "shared_image_embedding.positional_embedding"
_TIED_POS = "prompt_encoder.shared_embedding.positional_embedding"  # the same tensor, listed twice by transformers


def _prefix_regex(prefix: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(prefix).replace(r"\{\}", r"(\d+)"))


def _rename(key: str, *, to_hf: bool) -> str | None:
    for meta, hf in _PREFIXES:
        source, target = (meta, hf) if to_hf else (hf, meta)
        if m := _prefix_regex(source).match(key):
            return target.format(*m.groups()) + key[m.end() :]
    return None


def _map_key(key: str, *, to_hf: bool, head_depths: Mapping[str, int]) -> str:
    head = (_META_HEAD if to_hf else _HF_HEAD).match(key)
    if head:
        name, part, rest = head.groups()
        last = head_depths[name] - 1
        if to_hf:
            index = int(part)
            new = "proj_in" if index == 0 else "proj_out" if index == last else f"layers.{index - 1}"
        else:
            index = 0 if part == "proj_in" else last if part == "proj_out" else int(part.split(".")[1]) + 1
            new = f"layers.{index}"
        return f"mask_decoder.{name}.{new}.{rest}"
    renamed = _rename(key, to_hf=to_hf)
    if renamed is None:
        layout = "Meta segment-anything" if to_hf else "transformers SamModel"
        raise CheckpointError(f"unexpected key '{key}' for a {layout} state dict; is this a SAM checkpoint?")
    return renamed


def _head_depths(keys: list[str], *, hf: bool) -> dict[str, int]:
    """Number of linear layers in each decoder MLP head, read from the key names."""
    depths: dict[str, int] = {}
    for key in keys:
        if hf and (m := _HF_HEAD.match(key)):
            n = int(m.group(2).split(".")[1]) + 3 if m.group(2).startswith("layers.") else 2
        elif not hf and (m := _META_HEAD.match(key)):
            n = int(m.group(2)) + 1
        else:
            continue
        depths[m.group(1)] = max(depths.get(m.group(1), 0), n)
    return depths


def meta_to_hf(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Meta SAM state dict renamed to transformers' SamModel layout (the same tensor objects)."""
    keys = [k for k in state_dict if k not in _IGNORED_META_KEYS]
    depths = _head_depths(keys, hf=False)
    out = {_map_key(k, to_hf=True, head_depths=depths): state_dict[k] for k in keys}
    if _POS in out:
        out[_TIED_POS] = out[_POS]
    return out


def hf_to_meta(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`meta_to_hf`: a transformers SamModel state dict in Meta's naming."""
    keys = [k for k in state_dict if k != _TIED_POS]
    depths = _head_depths(keys, hf=True)
    return {_map_key(k, to_hf=False, head_depths=depths): state_dict[k] for k in keys}


def load_meta_sam(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a Meta ``sam_vit_*.pth`` file (on CPU) and return it in transformers' layout."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if "model" in state and isinstance(state["model"], dict):  # some training scripts wrap the weights
        state = state["model"]
    return meta_to_hf(state)

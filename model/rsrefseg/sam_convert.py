"""Meta's original SAM checkpoints (``sam_vit_b_01ec64.pth`` and friends) in transformers' ``SamModel`` layout.

The two layouts differ only in names (one :class:`~rsrs.model.key_map.KeyMap` of rules, used in both directions,
including the decoder's MLP heads, which Meta numbers ``layers.0..n-1`` and transformers ``proj_in`` /
``layers.0..n-3`` / ``proj_out``), and in transformers listing the prompt encoder's Fourier matrix twice. Tensors
are passed through unchanged, so the conversion is exact in both directions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from rsrs.model.key_map import KeyMap, Rule
from rsrs.model.torch_files import read_meta_state

_RULES = [
    Rule("image_encoder.patch_embed.proj.", "vision_encoder.patch_embed.projection."),
    Rule("image_encoder.pos_embed", "vision_encoder.pos_embed"),
    Rule("image_encoder.blocks.{}.norm1.", "vision_encoder.layers.{}.layer_norm1."),
    Rule("image_encoder.blocks.{}.norm2.", "vision_encoder.layers.{}.layer_norm2."),
    Rule("image_encoder.blocks.{}.attn.", "vision_encoder.layers.{}.attn."),
    Rule("image_encoder.blocks.{}.mlp.", "vision_encoder.layers.{}.mlp."),
    Rule("image_encoder.neck.0.", "vision_encoder.neck.conv1."),
    Rule("image_encoder.neck.1.", "vision_encoder.neck.layer_norm1."),
    Rule("image_encoder.neck.2.", "vision_encoder.neck.conv2."),
    Rule("image_encoder.neck.3.", "vision_encoder.neck.layer_norm2."),
    Rule("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "shared_image_embedding.positional_embedding"),
    Rule("prompt_encoder.point_embeddings.{}.", "prompt_encoder.point_embed.{}."),
    Rule("prompt_encoder.not_a_point_embed.", "prompt_encoder.not_a_point_embed."),
    Rule("prompt_encoder.no_mask_embed.", "prompt_encoder.no_mask_embed."),
    Rule("prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    Rule("prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    Rule("prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    Rule("prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    Rule("prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    Rule("mask_decoder.transformer.layers.{}.norm1.", "mask_decoder.transformer.layers.{}.layer_norm1."),
    Rule("mask_decoder.transformer.layers.{}.norm2.", "mask_decoder.transformer.layers.{}.layer_norm2."),
    Rule("mask_decoder.transformer.layers.{}.norm3.", "mask_decoder.transformer.layers.{}.layer_norm3."),
    Rule("mask_decoder.transformer.layers.{}.norm4.", "mask_decoder.transformer.layers.{}.layer_norm4."),
    Rule("mask_decoder.transformer.norm_final_attn.", "mask_decoder.transformer.layer_norm_final_attn."),
    Rule("mask_decoder.transformer.", "mask_decoder.transformer."),
    Rule("mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    Rule("mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    Rule("mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
    Rule("mask_decoder.iou_token.", "mask_decoder.iou_token."),
    Rule("mask_decoder.mask_tokens.", "mask_decoder.mask_tokens."),
    Rule("mask_decoder.output_hypernetworks_mlps.{}.", "mask_decoder.output_hypernetworks_mlps.{}.", mlp=True),
    Rule("mask_decoder.iou_prediction_head.", "mask_decoder.iou_prediction_head.", mlp=True),
]
_KEYS = KeyMap(_RULES, meta_layout="Meta segment-anything", hf_layout="transformers SamModel")
_IGNORED_META_KEYS = {
    "pixel_mean",
    "pixel_std",
}  # non-persistent buffers that some re-saved files still carry
_POS = "shared_image_embedding.positional_embedding"
_TIED_POS = "prompt_encoder.shared_embedding.positional_embedding"  # the same tensor, listed twice by transformers


def meta_to_hf(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Meta SAM state dict renamed to transformers' SamModel layout (the same tensor objects)."""
    names = _KEYS.rename((k for k in state_dict if k not in _IGNORED_META_KEYS), to_hf=True)
    out = {new: state_dict[old] for old, new in names.items()}
    if _POS in out:
        out[_TIED_POS] = out[_POS]
    return out


def hf_to_meta(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`meta_to_hf`: a transformers SamModel state dict in Meta's naming."""
    names = _KEYS.rename((k for k in state_dict if k != _TIED_POS), to_hf=False)
    return {new: state_dict[old] for old, new in names.items()}


def load_meta_sam(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a Meta ``sam_vit_*.pth`` file (on CPU) and return it in transformers' layout."""
    return meta_to_hf(read_meta_state(path, what="a Meta SAM checkpoint"))

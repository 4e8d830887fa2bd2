"""Meta's SAM 2 / 2.1 checkpoints (``sam2.1_hiera_large.pt`` and friends) in transformers' ``Sam2Model`` layout.

Meta's file is ``{"model": state_dict}`` of the whole video model ``SAM2Base``. The image model keeps its image
encoder (Hiera trunk + FPN neck), prompt encoder, mask decoder and the no-memory embedding; the memory attention,
memory encoder and object-pointer modules (:data:`UNUSED_META_MODULES`) serve video tracking only and are
dropped. Besides renames (one :class:`~rsrs.model.key_map.KeyMap`), two things are not one-to-one: Meta's four
point embeddings (``point_embeddings.{0..3}``, 1 x 256 each) are one 4 x 256 table in transformers, and
transformers lists the prompt encoder's Fourier matrix twice. Tensors are otherwise passed through, so the
conversion is exact in both directions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from transformers import Sam2Model

from rsrs.model.key_map import KeyMap, Rule
from rsrs.model.torch_files import load_strict, read_meta_state

_ENC, _TRUNK, _DEC = "image_encoder.", "image_encoder.trunk.", "sam_mask_decoder."
_HF_DEC = "mask_decoder."


def _attention(name: str) -> list[Rule]:
    """Meta's attention ``out_proj`` is transformers' ``o_proj``; q/k/v keep their names."""
    meta, hf = f"{_DEC}transformer.{name}.", f"{_HF_DEC}transformer.{name}."
    return [Rule(meta + "out_proj.", hf + "o_proj."), Rule(meta, hf)]


_RULES = [
    Rule(_TRUNK + "patch_embed.proj.", "vision_encoder.backbone.patch_embed.projection."),
    Rule(_TRUNK + "pos_embed", "vision_encoder.backbone.pos_embed"),
    Rule(_TRUNK + "pos_embed_window", "vision_encoder.backbone.pos_embed_window"),
    Rule(_TRUNK + "blocks.{}.norm1.", "vision_encoder.backbone.blocks.{}.layer_norm1."),
    Rule(_TRUNK + "blocks.{}.norm2.", "vision_encoder.backbone.blocks.{}.layer_norm2."),
    Rule(_TRUNK + "blocks.{}.attn.", "vision_encoder.backbone.blocks.{}.attn."),
    Rule(_TRUNK + "blocks.{}.proj.", "vision_encoder.backbone.blocks.{}.proj."),
    Rule(_TRUNK + "blocks.{}.mlp.", "vision_encoder.backbone.blocks.{}.mlp.", mlp=True),
    Rule(_ENC + "neck.convs.{}.conv.", "vision_encoder.neck.convs.{}."),
    Rule(
        "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "shared_image_embedding.positional_embedding"
    ),
    Rule("sam_prompt_encoder.point_embeddings.", "prompt_encoder.point_embed."),  # after stacking, see below
    Rule("sam_prompt_encoder.not_a_point_embed.", "prompt_encoder.not_a_point_embed."),
    Rule("sam_prompt_encoder.no_mask_embed.", "prompt_encoder.no_mask_embed."),
    Rule("sam_prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    Rule("sam_prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    Rule("sam_prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    Rule("sam_prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    Rule("sam_prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    *(
        Rule(_DEC + f"transformer.layers.{{}}.norm{i}.", _HF_DEC + f"transformer.layers.{{}}.layer_norm{i}.")
        for i in range(1, 5)
    ),
    Rule(_DEC + "transformer.layers.{}.mlp.", _HF_DEC + "transformer.layers.{}.mlp.", mlp=True),
    *_attention("layers.{}.self_attn"),
    *_attention("layers.{}.cross_attn_token_to_image"),
    *_attention("layers.{}.cross_attn_image_to_token"),
    *_attention("final_attn_token_to_image"),
    Rule(_DEC + "transformer.norm_final_attn.", _HF_DEC + "transformer.layer_norm_final_attn."),
    Rule(_DEC + "output_upscaling.0.", _HF_DEC + "upscale_conv1."),
    Rule(_DEC + "output_upscaling.1.", _HF_DEC + "upscale_layer_norm."),
    Rule(_DEC + "output_upscaling.3.", _HF_DEC + "upscale_conv2."),
    *(
        Rule(_DEC + f"{n}.", _HF_DEC + f"{n}.")
        for n in ("conv_s0", "conv_s1", "iou_token", "mask_tokens", "obj_score_token")
    ),
    Rule(_DEC + "output_hypernetworks_mlps.{}.", _HF_DEC + "output_hypernetworks_mlps.{}.", mlp=True),
    Rule(_DEC + "iou_prediction_head.", _HF_DEC + "iou_prediction_head.", mlp=True),
    Rule(_DEC + "pred_obj_score_head.", _HF_DEC + "pred_obj_score_head.", mlp=True),
    Rule("no_mem_embed", "no_memory_embedding"),
]
KEYS = KeyMap(_RULES, meta_layout="Meta SAM 2", hf_layout="transformers Sam2Model")

UNUSED_META_MODULES = (
    "memory_attention",
    "memory_encoder",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
    "obj_ptr_proj",
    "obj_ptr_tpos_proj",
    "mask_downsample",
)
"""Top-level modules of Meta's ``SAM2Base`` that only video tracking uses; their tensors are not loaded."""

POS = "shared_image_embedding.positional_embedding"
TIED_POS = "prompt_encoder.shared_embedding.positional_embedding"  # the same values, a second buffer in transformers
_POINTS = "sam_prompt_encoder.point_embeddings."
STACKED_POINTS = _POINTS + "weight"  # Meta's point_embeddings.{i}.weight (1 x C each), stacked: N x C
N_POINT_EMBEDDINGS = 4  # positive, negative, box corners 1 and 2: fixed by SAM's prompt encoder


def is_unused(meta_key: str) -> bool:
    """Whether a Meta key belongs to a video-only module (see :data:`UNUSED_META_MODULES`)."""
    return meta_key.split(".", 1)[0] in UNUSED_META_MODULES


def point_keys(n: int = N_POINT_EMBEDDINGS) -> list[str]:
    """Meta's names of the ``n`` point embeddings, in the order transformers stacks them."""
    return [f"{_POINTS}{i}.weight" for i in range(n)]


def meta_names(hf_keys: Iterable[str]) -> dict[str, list[str]]:
    """For each transformers key, the Meta key(s) holding it: one, or the point embeddings stacked along dim 0.

    Both copies of the Fourier matrix name the same Meta key.
    """
    keys = list(hf_keys)
    renamed = KEYS.rename([k for k in keys if k != TIED_POS], to_hf=False)
    if TIED_POS in keys:
        renamed[TIED_POS] = KEYS.rename([POS], to_hf=False)[POS]
    return {k: point_keys() if meta == STACKED_POINTS else [meta] for k, meta in renamed.items()}


def meta_to_hf(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Meta SAM 2 state dict in transformers' Sam2Model layout; video-only modules are left out, and any key
    outside both sets raises :class:`~rsrs.core.errors.CheckpointError`."""
    state = {k: v for k, v in state_dict.items() if not is_unused(k)}
    points = [k for k in state if k.startswith(_POINTS)]
    if points:
        state[STACKED_POINTS] = torch.cat([state.pop(k) for k in point_keys(len(points))])  # N x C
    out = {new: state[old] for old, new in KEYS.rename(state, to_hf=True).items()}
    if POS in out:
        out[TIED_POS] = out[POS]
    return out


def hf_to_meta(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`meta_to_hf` (without the video-only modules, which Sam2Model does not have)."""
    out: dict[str, torch.Tensor] = {}
    keys = [k for k in state_dict if k != TIED_POS or POS not in state_dict]  # the primary copy is written
    for key, names in meta_names(keys).items():
        value = state_dict[key]
        out |= dict(zip(names, value.split(1), strict=True)) if len(names) > 1 else {names[0]: value}
    return out


def load_meta_sam2(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a Meta ``sam2*_hiera_*.pt`` file (on CPU) and return it in transformers' layout."""
    return meta_to_hf(read_meta_state(path, what="a Meta SAM 2 checkpoint"))


def apply_meta_sam2(model: Sam2Model, path: str | Path) -> None:
    """Load a Meta SAM 2 checkpoint into ``model`` (every parameter and buffer, shapes checked), or raise
    :class:`~rsrs.core.errors.CheckpointError` naming the first tensor that does not fit."""
    hint = "use the preset whose SAM 2 size matches the file (sam2.1_hiera_large.pt: rsrefseg2-l)"
    load_strict(model, load_meta_sam2(path), path=path, hint=hint)

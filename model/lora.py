"""LoRA on the backbones (peft) and the trainable parameter set of each architecture (DESIGN §4).

An architecture states where LoRA goes and what trains in a :class:`TrainableSet` (its model class's
``trainable_set``); the functions here apply it. RSRefSeg's: LoRA on SAM's image encoder (``qkv``, ``proj``,
``lin1``, ``lin2``, the neck convolutions) and on SigLIP's vision and text attention projections
(``q/k/v/out_proj``) and text head. Trained: LoRA, the prompter, SAM's prompt encoder (its learned embeddings; the
Fourier matrix is a fixed buffer in Meta's SAM) and mask decoder, and SigLIP's ``logit_scale``/``logit_bias``.
Everything else stays frozen.

Two other trained sets: ``all`` (every parameter, for models trained from random init) and
``all_but_image_encoders`` (everything except the image encoders, whose features then never change, so training
can compute them once: ``data.cache_image_features``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from peft import LoraConfig, inject_adapter_in_model
from torch import nn


@dataclass(frozen=True)
class TrainableSet:
    """Where an architecture puts LoRA and which of its parameters train.

    lora_targets: regex over module names (peft ``target_modules``)
    trained: the non-LoRA parameters trained in mode 'lora' (matched against parameter names)
    image_encoders: name prefixes of every parameter the image features depend on (frozen by
        'all_but_image_encoders', so features can be computed once)
    """

    lora_targets: str
    trained: re.Pattern[str]
    image_encoders: tuple[str, ...]


LORA_TARGETS = "|".join(
    [
        r"sam\.vision_encoder\.layers\.\d+\.attn\.(qkv|proj)",
        r"sam\.vision_encoder\.layers\.\d+\.mlp\.(lin1|lin2)",
        r"sam\.vision_encoder\.neck\.conv[12]",
        r"siglip\.(vision|text)_model\.encoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj",
        r"siglip\.text_model\.head",
    ]
)

_TRAINED_MODULES = re.compile(
    r"^(prompter\.|sam\.mask_decoder\.|sam\.prompt_encoder\.(?!shared_embedding\.)|siglip\.logit_(scale|bias)$)"
)
_LORA_PARAM = re.compile(r"\.lora_(A|B)\.")
IMAGE_ENCODERS = ("sam.vision_encoder.", "siglip.vision_model.")
RSREFSEG_TRAINABLE = TrainableSet(lora_targets=LORA_TARGETS, trained=_TRAINED_MODULES, image_encoders=IMAGE_ENCODERS)


def apply_lora(model: nn.Module, *, targets: str, r: int, alpha: float, dropout: float) -> None:
    """Inject LoRA adapters in place on the modules ``targets`` matches (after the base weights are loaded);
    ``r=0`` does nothing."""
    if r <= 0:
        return
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    inject_adapter_in_model(config, model)


def is_trained(name: str, *, mode: str, rules: TrainableSet) -> bool:
    """Whether a parameter (by its name in the model) is trained under ``mode`` ('lora', 'all' or
    'all_but_image_encoders') and the architecture's ``rules``."""
    if mode == "all":
        return True
    if mode == "all_but_image_encoders":
        return not name.startswith(rules.image_encoders)
    return bool(_LORA_PARAM.search(name) or rules.trained.match(name))


def mark_trainable(model: nn.Module, *, mode: str) -> None:
    """Set ``requires_grad`` on exactly the trained parameter set of the model's architecture."""
    for name, param in model.named_parameters():
        param.requires_grad_(is_trained(name, mode=mode, rules=model.trainable_set))


def image_encoders_frozen(model: nn.Module) -> bool:
    """Whether no parameter the image features depend on trains (so they are fixed through training)."""
    prefixes = model.trainable_set.image_encoders
    return not any(p.requires_grad for n, p in model.named_parameters() if n.startswith(prefixes))

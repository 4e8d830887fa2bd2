"""LoRA on the backbones (peft) and the trainable parameter set of each architecture (DESIGN §4).

An architecture states where LoRA goes and what trains in a :class:`TrainableSet` (its model class's
``trainable_set``, beside the class in its folder); the functions here apply it.

Two other trained sets: ``all`` (every parameter, for models trained from random init) and
``all_but_image_encoders`` (everything except the image encoders, whose features then never change, so training
can compute them once: ``data.cache_image_features``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
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


_LORA_PARAM = re.compile(r"\.lora_(A|B)\.")


def apply_lora(model: nn.Module, *, targets: str, r: int, alpha: float, dropout: float) -> None:
    """Inject LoRA adapters in place on the modules ``targets`` matches (after the base weights are loaded);
    ``r=0`` does nothing."""
    if r <= 0:
        return
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    inject_adapter_in_model(config, model)


def merge_lora_adapters(model: nn.Module) -> int:
    """Fold each LoRA adapter in ``model`` into its base layer's weight (peft's ``merge``), in place, for inference;
    returns how many layers it merged.

    An unmerged adapter costs every call two rank-r matmuls, a scaling and an add over the layer's whole output: in a
    compiled rsrefseg-b batch the adapters' matmuls alone took 15.5 of 158.9 ms of kernels on an H200
    (benchmarks/results/traces_fp8/). Merged, the layer runs its base matmul only. Parameter names stay, the adapters
    stay (unused), and the outputs change by rounding only. Never for a model that trains or is saved afterwards:
    its base weights now include the adapters, which would count twice.
    """
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not m.merged]
    for layer in layers:
        layer.merge()
    return len(layers)


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

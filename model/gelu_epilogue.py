"""MLPs with their first matmul's bias and GELU done in the matmul's epilogue (cuBLASLt), on a GPU.

Compiled, SigLIP so400m's first MLP matmul (batch 32 at 384 px: 23,328 tokens x 1152 @ 1152 x 4304) ran on an H200
as three kernels: its bias copied into the output (0.17 ms), a matmul adding onto it (0.32 ms) and the GELU (0.13
ms), 27 layers a batch (benchmarks/results/traces_autotune/): the bias reached ATen's addmm broadcast to the
output's shape, and ATen takes cuBLASLt's bias epilogue only for a 1-D bias. ``torch._addmm_activation`` with the
1-D bias and ``use_gelu`` is one cuBLASLt call whose epilogue adds the bias and applies GELU's tanh approximation,
which is the activation SigLIP and SigLIP2 use ('gelu_pytorch_tanh'); inductor keeps it as one call. Compiled
rsrefseg-b's batch kernels took 160.4 ms against 167.0 without it on an H200
(benchmarks/results/encoder_fusion_rsrefseg-b_gelu.json), so ``accelerate`` applies it by default.

SAM's and SAM 2's MLPs use the exact GELU, which the epilogue does not compute; inductor runs it as its own kernel
after the matmul (SAM ViT-B's 12 took 7.9 ms of a compiled batch of 32, traces_fp8/). With ``approximate=True``
they take the epilogue too and compute the tanh approximation, which is within 4.8e-4 of the exact GELU everywhere
(the most near x = 2.7, where bf16's step is 1.6e-2), less than bf16 rounds any output above 0.125.

On the CPU ``_addmm_activation`` applies the exact GELU instead, so there a layer keeps transformers' forward.
Applied after construction (STYLE rule 4): each MLP's ``forward`` is replaced on the instance; its layers, their
parameter names and any adapters on its second layer stay as they are. An MLP whose first layer is not a plain
linear layer with a bias (an unmerged LoRA adapter on it, as on RSRefSeg 2's SigLIP head) is left alone; a merged
one computes its base layer, which then holds the adapter.
"""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.sam.modeling_sam import SamMLPBlock
from transformers.models.sam2.modeling_sam2 import Sam2FeedForward
from transformers.models.siglip.modeling_siglip import SiglipMLP
from transformers.models.siglip2.modeling_siglip2 import Siglip2MLP

from rsrs.model.instance_forward import bind_forward, runs_forward

#: Each MLP class of the encoders and its (first layer, activation, second layer) attribute names.
MLP_LAYERS: dict[type[nn.Module], tuple[str, str, str]] = {
    SiglipMLP: ("fc1", "activation_fn", "fc2"),
    Siglip2MLP: ("fc1", "activation_fn", "fc2"),
    SamMLPBlock: ("lin1", "act", "lin2"),
    Sam2FeedForward: ("proj_in", "activation", "proj_out"),
}
#: The activation cuBLASLt's GELU epilogue computes (tanh approximation), and the exact GELU, as transformers builds
#: them (their class names differ between transformers versions).
TANH_GELU = type(ACT2FN["gelu_pytorch_tanh"])
EXACT_GELU = type(ACT2FN["gelu"])


def fuse_gelu_epilogues(model: nn.Module, *, approximate: bool = False) -> int:
    """Give every MLP in ``model`` that can take it the epilogue forward: those with the tanh GELU, and with
    ``approximate`` those with the exact GELU too; returns how many it changed."""
    activations = (TANH_GELU, EXACT_GELU) if approximate else (TANH_GELU,)
    return bind_forward([m for m in model.modules() if _takes_epilogue(m, activations)], gelu_epilogue_forward)


def has_gelu_epilogue(module: nn.Module) -> bool:
    """Whether ``module`` is an MLP running :func:`gelu_epilogue_forward`."""
    return runs_forward(module, gelu_epilogue_forward)


def gelu_epilogue_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """An MLP's forward with its first layer's bias and GELU in the matmul's epilogue on CUDA (bound by
    :func:`fuse_gelu_epilogues`); transformers' forward elsewhere.

    hidden_states: ... x width -> ... x width
    """
    if not hidden_states.is_cuda:
        return type(self).forward(self, hidden_states)
    first, _, second = MLP_LAYERS[type(self)]
    linear = _plain_linear(getattr(self, first))
    *lead, width = hidden_states.shape
    tokens = hidden_states.reshape(-1, width)  # tokens x width
    hidden = torch._addmm_activation(linear.bias, tokens, linear.weight.t(), use_gelu=True)  # tokens x inner
    return getattr(self, second)(hidden.reshape(*lead, -1))


def mlp_first_layer(module: nn.Module) -> nn.Module | None:
    """``module``'s first layer (the one the activation follows) if it is one of :data:`MLP_LAYERS`' MLPs."""
    names = MLP_LAYERS.get(type(module))
    return None if names is None else getattr(module, names[0])


def _takes_epilogue(module: nn.Module, activations: tuple[type[nn.Module], ...]) -> bool:
    names = MLP_LAYERS.get(type(module))
    if names is None or type(getattr(module, names[1])) not in activations:
        return False
    if isinstance(module, Sam2FeedForward) and (len(module.layers) or module.sigmoid_output):
        return False  # more than one activation, or a sigmoid after the second layer
    linear = _plain_linear(getattr(module, names[0]))
    return linear is not None and linear.bias is not None


def _plain_linear(layer: nn.Module) -> nn.Linear | None:
    """The plain linear layer ``layer`` computes: itself, or the base of a merged LoRA layer."""
    if isinstance(layer, BaseTunerLayer) and layer.merged:
        layer = layer.get_base_layer()
    return layer if type(layer) is nn.Linear else None

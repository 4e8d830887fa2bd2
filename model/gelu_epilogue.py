"""SigLIP's MLP with its first matmul's bias and GELU done in the matmul's epilogue (cuBLASLt), on a GPU.

Compiled, SigLIP so400m's first MLP matmul (batch 32 at 384 px: 23,328 tokens x 1152 @ 1152 x 4304) ran on an H200
as three kernels: its bias copied into the output (0.17 ms), a matmul adding onto it (0.32 ms) and the GELU (0.13
ms), 27 layers a batch (benchmarks/results/traces_autotune/): the bias reached ATen's addmm broadcast to the
output's shape, and ATen takes cuBLASLt's bias epilogue only for a 1-D bias. ``torch._addmm_activation`` with the
1-D bias and ``use_gelu`` is one cuBLASLt call whose epilogue adds the bias and applies GELU's tanh approximation,
which is the activation SigLIP and SigLIP2 use ('gelu_pytorch_tanh'); inductor keeps it as one call. Compiled
rsrefseg-b's batch kernels took 160.4 ms against 167.0 without it on an H200
(benchmarks/results/encoder_fusion_rsrefseg-b_gelu.json), so ``accelerate`` applies it by default.

On the CPU ``_addmm_activation`` applies the exact GELU instead, so there a layer keeps transformers' forward.
Applied after construction (STYLE rule 4): each MLP's ``forward`` is replaced on the instance; ``fc1``/``fc2``,
their parameter names and any adapters on ``fc2`` stay as they are. An MLP whose ``fc1`` is not a plain linear
layer with a bias (LoRA on it, as on RSRefSeg 2's SigLIP head) is left alone.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.siglip.modeling_siglip import SiglipMLP
from transformers.models.siglip2.modeling_siglip2 import Siglip2MLP

from rsrs.model.instance_forward import bind_forward, runs_forward

#: The activation cuBLASLt's GELU epilogue computes (tanh approximation), by transformers' name.
EPILOGUE_ACTIVATION = "gelu_pytorch_tanh"


def fuse_gelu_epilogues(model: nn.Module) -> int:
    """Give every SigLIP(2) MLP in ``model`` that can take it the epilogue forward; returns how many it changed."""
    return bind_forward([m for m in model.modules() if _takes_epilogue(m)], gelu_epilogue_forward)


def has_gelu_epilogue(module: nn.Module) -> bool:
    """Whether ``module`` is an MLP running :func:`gelu_epilogue_forward`."""
    return runs_forward(module, gelu_epilogue_forward)


def gelu_epilogue_forward(self: SiglipMLP | Siglip2MLP, hidden_states: torch.Tensor) -> torch.Tensor:
    """``SiglipMLP.forward`` with fc1's bias and GELU in its matmul's epilogue on CUDA (bound by
    :func:`fuse_gelu_epilogues`); transformers' forward elsewhere.

    hidden_states: ... x width -> ... x width
    """
    if not hidden_states.is_cuda:
        return type(self).forward(self, hidden_states)
    *lead, width = hidden_states.shape
    tokens = hidden_states.reshape(-1, width)  # tokens x width
    hidden = torch._addmm_activation(self.fc1.bias, tokens, self.fc1.weight.t(), use_gelu=True)  # tokens x inner
    return self.fc2(hidden.reshape(*lead, -1))


def _takes_epilogue(module: nn.Module) -> bool:
    return (
        isinstance(module, (SiglipMLP, Siglip2MLP))
        and module.config.hidden_act == EPILOGUE_ACTIVATION
        and type(module.fc1) is nn.Linear
        and module.fc1.bias is not None
    )

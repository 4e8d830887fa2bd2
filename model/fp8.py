"""Optional FP8 image encoders (``accelerate(..., fp8=True)``): their linear layers in float8 on H100/H200.

torchao's dynamic float8 quantisation (activations and weights in e4m3, one scale per row) swaps each linear
layer's weight for a float8 tensor subclass after construction; the module code stays transformers' own
(STYLE rule 4). Row-wise scaled float8 matmuls need compute capability 9.0 (Hopper) and bf16 weights, and pay
off compiled (the activation scaling fuses into the preceding kernels). LoRA adapters (``lora_A``/``lora_B``,
rank 16) and layers whose sizes are not multiples of 16 stay bf16. FP8 changes the numbers: it is off by
default and measured against bf16 by ``benchmarks/encoder_fusion.py --fp8``.
"""

from __future__ import annotations

from importlib.util import find_spec

import torch
from torch import nn

from rsrs.core.errors import ConfigError
from rsrs.model.acceleration import image_encoders

MIN_CAPABILITY = (9, 0)

#: The least row maximum an activation's float8 scale is taken from. SAM ViT pads its token map to whole windows
#: with zeros (64 x 64 tokens in windows of 14 at 1024 px): an all-zero row would get a scale of 0 and quantise to
#: 0/0 = NaN (the NaN logits of rsrefseg-b on an H200); with this floor it quantises to zeros.
ACTIVATION_AMAX_FLOOR = 1e-12


def fp8_image_encoders(model: nn.Module) -> int:
    """Quantise the linear layers of every image encoder in ``model`` to float8, in place; returns how many.

    Raises :class:`ConfigError` (one line) on a machine or model where it cannot run.
    """
    encoders = image_encoders(model)
    if not encoders:
        raise ConfigError("fp8 applies to image encoders (SAM, SAM 2, SigLIP); none found in this model")
    weight = next(next(iter(encoders.values())).parameters())
    check_fp8_support(weight.device, weight.dtype)
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), activation_value_lb=ACTIVATION_AMAX_FLOOR)
    converted = 0
    for encoder in encoders.values():
        converted += sum(_fp8_eligible(module, name) for name, module in encoder.named_modules())
        quantize_(encoder, config, filter_fn=_fp8_eligible)
    return converted


def check_fp8_support(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> None:
    """Raise :class:`ConfigError` (one line) unless image encoders with ``dtype`` weights on ``device`` can run fp8.

    Cheap: a client can call it before starting workers (``rsrs run`` with ``model.precision: fp8``).
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ConfigError(
            f"model precision fp8 needs an NVIDIA GPU of compute capability >= 9.0 (H100, H200); the model is on "
            f"{device.type}: use precision bf16"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        raise ConfigError(
            f"model precision fp8 needs compute capability >= 9.0 (H100, H200); {torch.cuda.get_device_name(device)} "
            f"has {capability[0]}.{capability[1]}: use precision bf16"
        )
    if dtype != torch.bfloat16:
        raise ConfigError(f"model precision fp8 needs bf16 weights, got {dtype}: load the model with dtype bfloat16")
    if find_spec("torchao") is None:
        raise ConfigError("model precision fp8 needs torchao: pip install torchao")


def _fp8_eligible(module: nn.Module, name: str) -> bool:
    """A plain linear layer of the encoder with float8-GEMM-friendly sizes, not a LoRA adapter."""
    return (
        isinstance(module, nn.Linear)
        and "lora_" not in name
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )

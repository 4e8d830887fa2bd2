"""Optional FP8 image encoders (``accelerate(..., fp8=True)``): most linear layers' matmuls in float8 on H100/H200.

Each eligible linear layer keeps its bf16 weight (names, state dict and checkpoints unchanged) and gains a float8
(e4m3) copy of it with one scale per output row, as non-persistent buffers. Its forward, bound after construction
(STYLE rule 4), scales each input row into float8 and calls ``torch._scaled_mm`` with both row-wise scales and the
bias, which cuBLAS/CUTLASS apply in the matmul's epilogue. Row-wise scaled float8 matmuls need compute capability
9.0 (Hopper). LoRA adapters (rank 16) and layers whose sizes are not multiples of 16 stay bf16.

Why not torchao's float8 tensor subclass, which this module used before: on an H200 it ran rsrefseg-b's encoders
uncompiled at 0.7x bf16, and compiling them did not finish within 160-412 s
(benchmarks/results/encoder_fusion_rsrefseg-b_fp8.json, docs/performance.md). Plain ATen ops go through inductor
(tests/model/test_fp8.py compiles a float8 MLP), which fuses each input's row scaling into the kernel that
produces it (a layer norm, the copy of an attention output).

Which layers: not an MLP's second layer, whose input is the activation's output. Its row maxima reduce over the MLP's
inner width (3,072 for SAM ViT-B) inside the GELU's kernel: on an H200 SAM's 12 such kernels took 23.0 ms of a
compiled batch of 32 against 7.9 for the plain GELU, so float8 on every layer ran rsrefseg-b at 0.96x bf16
(docs/performance.md). Not an MLP's first layer either where the GELU epilogue computes it
(rsrs.model.gelu_epilogue), which never calls the layer. So chosen, compiled rsrefseg-b's workers' function ran at
1.06x bf16 on an H200 (230.3 against 216.6 tiles/s, encoder_fusion_rsrefseg-b_merged.json). FP8 changes the numbers
too (99.74% of the demo model's mask pixels kept on a real image): it is off by default and measured against bf16 by
``benchmarks/encoder_fusion.py --fp8``.
"""

from __future__ import annotations

import torch
from torch import nn

from rsrs.core.errors import ConfigError
from rsrs.model.acceleration import image_encoders
from rsrs.model.gelu_epilogue import has_gelu_epilogue, mlp_first_layer
from rsrs.model.instance_forward import bind_forward, runs_forward

MIN_CAPABILITY = (9, 0)
FLOAT8 = torch.float8_e4m3fn
FLOAT8_MAX = torch.finfo(FLOAT8).max  # 448

#: The least row maximum a float8 scale is taken from. SAM ViT pads its token map to whole windows with zeros (64 x
#: 64 tokens in windows of 14 at 1024 px): an all-zero row would get a scale of 0 and quantise to 0/0 = NaN (the NaN
#: logits of rsrefseg-b on an H200); with this floor it quantises to zeros.
ACTIVATION_AMAX_FLOOR = 1e-12


def fp8_ready_image_encoders(model: nn.Module) -> list[nn.Module]:
    """The image encoders of ``model``, once checked that float8 can run them; changes nothing.

    Raises :class:`ConfigError` (one line) on a machine or model where it cannot run.
    """
    encoders = list(image_encoders(model).values())
    if not encoders:
        raise ConfigError("fp8 applies to image encoders (SAM, SAM 2, SigLIP); none found in this model")
    weight = next(encoders[0].parameters())
    check_fp8_support(weight.device, weight.dtype)
    return encoders


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


def float8_linears(module: nn.Module) -> int:
    """Give each eligible linear layer in ``module`` float8 weights and :func:`float8_linear_forward`; returns how
    many. The weights are quantised as they are now: call it after loading a checkpoint. No device check (the CPU
    runs ``torch._scaled_mm`` too, slowly): :func:`fp8_ready_image_encoders` is the check."""
    kept = _activation_fed_or_epilogue_layers(module)
    layers = [m for name, m in module.named_modules() if _fp8_eligible(m, name) and m not in kept]
    for layer in layers:
        weight, scale = rowwise_float8(layer.weight.detach())  # out x in, out x 1
        layer.register_buffer("weight_float8", weight, persistent=False)
        layer.register_buffer("weight_scale", scale.t().contiguous(), persistent=False)  # 1 x out
    return bind_forward(layers, float8_linear_forward)


def runs_float8(module: nn.Module) -> bool:
    """Whether ``module`` is a linear layer running :func:`float8_linear_forward`."""
    return runs_forward(module, float8_linear_forward)


def rowwise_float8(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` (N x K) in float8 e4m3 and each row's float32 scale (N x 1), so that ``rows ~ float8 * scale``."""
    amax = rows.abs().amax(dim=-1, keepdim=True).float().clamp(min=ACTIVATION_AMAX_FLOOR)  # N x 1
    scale = amax / FLOAT8_MAX
    return (rows.float() / scale).clamp(-FLOAT8_MAX, FLOAT8_MAX).to(FLOAT8), scale


def float8_linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``nn.Linear.forward`` as a row-wise scaled float8 matmul (bound by :func:`float8_linears`).

    x: ... x in -> ... x out, in ``x``'s dtype
    """
    *lead, width = x.shape
    rows, row_scale = rowwise_float8(x.reshape(-1, width))  # tokens x in (float8), tokens x 1
    out = torch._scaled_mm(
        rows,
        self.weight_float8.t(),  # in x out, column-major as the kernel wants it
        scale_a=row_scale,
        scale_b=self.weight_scale,
        bias=self.bias,
        out_dtype=x.dtype,
        use_fast_accum=True,
    )  # tokens x out
    return out.reshape(*lead, -1)


def _activation_fed_or_epilogue_layers(module: nn.Module) -> set[nn.Module]:
    """The linear layers of ``module``'s MLPs that stay bf16: all but each MLP's first, and that one too where the
    MLP computes it in the GELU epilogue."""
    kept: set[nn.Module] = set()
    for mlp in module.modules():
        first = mlp_first_layer(mlp)
        if first is None:
            continue
        first_layers = set() if has_gelu_epilogue(mlp) else set(first.modules())
        kept |= {m for m in mlp.modules() if type(m) is nn.Linear and m not in first_layers}
    return kept


def _fp8_eligible(module: nn.Module, name: str) -> bool:
    """A plain linear layer of the encoder with float8-GEMM-friendly sizes, not a LoRA adapter."""
    return (
        type(module) is nn.Linear
        and "lora_" not in name
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )

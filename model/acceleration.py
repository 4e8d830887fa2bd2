"""Fast inference for a built model: LoRA merged, fused SAM attention, SDPA attention, patch embeddings as matmuls,
compiled image encoders and decoder, optional FP8.

Everything acts on the module types it finds inside any ``nn.Module`` (SAM ViT and SAM 2 Hiera image encoders,
SigLIP and SigLIP2 vision towers), so it applies to RSRefSeg and RSRefSeg 2 alike without knowing which, and
after construction (STYLE rule 4): no transformers module code is copied. The GPU worker calls
:func:`accelerate` once after loading; the first batch at the job's shape then compiles (or loads from the
compile cache) and, in the worker, is captured with the rest of the batch function in its CUDA graphs.

Why compile without CUDA graphs: ``rsrs.model.predictor.GraphedBatches`` already captures the whole batch function
(both encoders, prompter, mask decoder, quantisation) as one graph. Inductor's kernels are ordinary launches and
are captured into it; compile's own graphs ('reduce-overhead', 'max-autotune') would cover only the compiled
parts and cannot be captured inside ours, so those modes are refused.

Why a cache directory rather than the mega-cache: inductor already persists compiled graphs (FX graph cache,
on by default), Triton kernels and autotuning results under ``TORCHINDUCTOR_CACHE_DIR``, which defaults to a
per-user folder in /tmp that is wiped with the machine's temporary files. Pointing it at a stable folder,
``~/.cache/rsrs/inductor`` (or ``$RSRS_COMPILE_CACHE``), pays inductor's code generation once per machine, for
every worker process and every later job; Dynamo's tracing and the cache reads are paid per process. The
mega-cache (``torch.compiler.save_cache_artifacts``) only packs the same entries into one blob to move them
between machines, which the workers do not need.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from transformers.models.sam.modeling_sam import SamVisionAttention, SamVisionEncoder, SamVisionSdpaAttention
from transformers.models.sam2.modeling_sam2 import Sam2HieraDetModel, Sam2MultiScaleAttention, Sam2VisionModel
from transformers.models.siglip.modeling_siglip import SiglipAttention, SiglipVisionModel
from transformers.models.siglip2.modeling_siglip2 import Siglip2Attention, Siglip2VisionModel

from rsrs.model.fused_attention import Kernel, default_kernel, fuse_sam_attention, is_fused
from rsrs.model.gelu_epilogue import fuse_gelu_epilogues
from rsrs.model.lora import merge_lora_adapters
from rsrs.model.patch_embedding import patch_convolutions_as_matmuls
from rsrs.model.segmenter import PairwiseSegmenter

#: The image encoders :func:`accelerate` compiles (the outermost one where they nest).
IMAGE_ENCODER_TYPES: tuple[type[nn.Module], ...] = (
    SamVisionEncoder,
    Sam2VisionModel,
    Sam2HieraDetModel,
    SiglipVisionModel,
    Siglip2VisionModel,
)
#: Attention layers that pick their kernel from ``config._attn_implementation`` at every call.
CONFIGURED_ATTENTION_TYPES: tuple[type[nn.Module], ...] = (SiglipAttention, Siglip2Attention, Sam2MultiScaleAttention)
#: inductor's settings by mode, none capturing CUDA graphs of its own: torch's 'default' and
#: 'max-autotune-no-cudagraphs' (torch's own settings for it), and 'coordinate-descent', which tunes the
#: launch settings of inductor's own kernels (element-wise work, norms) but does not autotune matmuls: with that,
#: max-autotune had not compiled rsrefseg-b after 590 s on an H200 (encoder_fusion_rsrefseg-b_autotune.json).
COMPILE_MODES: dict[str, dict[str, bool]] = {
    "default": {},
    "max-autotune-no-cudagraphs": {"max_autotune": True, "coordinate_descent_tuning": True},
    "coordinate-descent": {"coordinate_descent_tuning": True},
}
COMPILE_CACHE_ENV = "RSRS_COMPILE_CACHE"


def accelerate(
    model: nn.Module,
    *,
    compile: bool = True,
    fused_attention: bool | Kernel = True,
    patch_matmuls: bool = True,
    gelu_epilogues: bool = True,
    approximate_gelu: bool = False,
    merge_lora: bool = True,
    fp8: bool = False,
    compile_decoder: bool = True,
    mode: str = "default",
) -> nn.Module:
    """``model`` made fast for inference, in place (and returned); its outputs stay eager's up to rounding.

    Always: attention layers configured 'eager' switch to 'sdpa' (:func:`use_sdpa_attention`).
    ``merge_lora``: LoRA adapters folded into their base weights (:func:`rsrs.model.lora.merge_lora_adapters`), so
    they no longer run; the model must not train afterwards.
    ``fused_attention``: SAM ViT attention with its relative positions inside one kernel (rsrs.model.fused_attention;
    True for :func:`~rsrs.model.fused_attention.default_kernel`, 'triton' on a GPU and 'channels' elsewhere, or a
    kernel's name).
    ``patch_matmuls``: the image encoders' patch-embedding convolutions as one matmul (rsrs.model.patch_embedding).
    With both, on an H200, rsrefseg-b's ``encode_images`` ran at 138 tiles/s against 73 eager, and 185 against 158
    compiled (benchmarks/results/encoder_fusion_rsrefseg-b_fast.json).
    ``gelu_epilogues``: SigLIP's MLPs add their first bias and apply GELU in cuBLASLt's matmul epilogue on a GPU
    (rsrs.model.gelu_epilogue; compiled rsrefseg-b's workers' function 193 against 186 tiles/s on an H200,
    encoder_fusion_rsrefseg-b_gelu.json). ``approximate_gelu``: SAM's and SAM 2's MLPs too, whose exact GELU then
    becomes its tanh approximation (within 4.8e-4): off by default.
    ``fp8``: most of the image encoders' linear layers in float8 (H100/H200; rsrs.model.fp8): changes the numbers,
    off by default.
    ``compile``: each image encoder compiled (``mode`` without CUDA graphs), with the persistent compile cache;
    and, with ``compile_decoder``, the model's prompter and mask decoder (:func:`compile_decode_pairs`).
    Parameter names are unchanged; the changes cannot be undone on this instance.
    """
    if compile and mode not in COMPILE_MODES:
        raise ValueError(
            f"compile mode must be one of {tuple(COMPILE_MODES)} (rsrs captures its own CUDA graphs), got {mode!r}"
        )
    fp8_encoders: list[nn.Module] = []
    if fp8:  # first: it refuses machines it cannot run on before anything has changed
        from rsrs.model.fp8 import float8_linears, fp8_ready_image_encoders

        fp8_encoders = fp8_ready_image_encoders(model)
    if merge_lora:
        merge_lora_adapters(model)
    use_sdpa_attention(model)
    if fused_attention:
        fuse_sam_attention(model, kernel=default_kernel(model) if fused_attention is True else fused_attention)
    if gelu_epilogues:
        fuse_gelu_epilogues(model, approximate=approximate_gelu)
    for encoder in fp8_encoders:  # after merging and the epilogues: float8 copies of the weights as they now are,
        float8_linears(encoder)  # for the layers the epilogues do not compute
    encoders = image_encoders(model).values()
    if patch_matmuls:
        for encoder in encoders:
            patch_convolutions_as_matmuls(encoder)
    if compile:
        use_compile_cache()
        for encoder in encoders:
            encoder.compile(options=COMPILE_MODES[mode], dynamic=False)
        if compile_decoder:
            compile_decode_pairs(model, mode=mode)
    return model


def compile_decode_pairs(model: nn.Module, *, mode: str = "default") -> bool:
    """Compile ``model.decode_pairs`` (prompter, mask decoder, logits to the tiles' size) on this instance; returns
    whether it did (False for a module without one, or one compiled already).

    Its element-wise work (layer norms, adds, copies over every pair's 64 x 64 x 256 image embedding) ran eagerly
    inside the workers' CUDA graphs: 7.7 of the 140.8 ms of kernels of a compiled rsrefseg-b batch of 32 on an H200
    (benchmarks/results/traces_merged/trace.fused_compiled.json.gz). One graph per pair count (a batch's pairs
    are decoded in chunks of at most 64).
    """
    if not isinstance(model, PairwiseSegmenter) or is_decoder_compiled(model):
        return False
    model.decode_pairs = torch.compile(model.decode_pairs, options=COMPILE_MODES[mode], dynamic=False)
    return True


def is_decoder_compiled(model: nn.Module) -> bool:
    """Whether :func:`compile_decode_pairs` compiled ``model``'s ``decode_pairs``."""
    return "decode_pairs" in vars(model)


def image_encoders(model: nn.Module) -> dict[str, nn.Module]:
    """The image encoders inside ``model`` (or ``model`` itself) by qualified name, the outermost where they nest."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        inside = any(parent == "" or name.startswith(f"{parent}.") for parent in found)
        if isinstance(module, IMAGE_ENCODER_TYPES) and not inside:
            found[name] = module
    return found


def use_sdpa_attention(model: nn.Module) -> int:
    """Switch attention layers configured 'eager' to PyTorch's SDPA; returns how many it switched.

    SigLIP(2) and SAM 2 Hiera layers read ``config._attn_implementation`` at each call; with 'sdpa' and no mask
    (vision towers pass none, nor does Hiera) PyTorch may pick flash attention in bf16. Layers on another
    implementation (sdpa, flash_attention_2, flex_attention) are left as chosen.
    """
    layers = [
        module
        for module in model.modules()
        if isinstance(module, CONFIGURED_ATTENTION_TYPES) and module.config._attn_implementation in (None, "eager")
    ]
    for layer in layers:  # layers of one tower share their config
        layer.config._attn_implementation = "sdpa"
    return len(layers)


def attention_kernels(model: nn.Module) -> dict[str, int]:
    """How many attention layers of each class run on which kernel, e.g. ``{'SiglipAttention: sdpa': 54}``."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, SamVisionAttention):
            kernel = f"fused {module.fused_kernel}" if is_fused(module) else _stock_sam_kernel(module)
        elif isinstance(module, CONFIGURED_ATTENTION_TYPES):
            kernel = module.config._attn_implementation or "eager"
        else:
            continue
        key = f"{type(module).__name__}: {kernel}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _stock_sam_kernel(module: SamVisionAttention) -> str:
    return "sdpa" if isinstance(module, SamVisionSdpaAttention) else "eager"


def compile_cache_dir() -> Path:
    """Where compiled kernels persist: ``$RSRS_COMPILE_CACHE``, else ``~/.cache/rsrs/inductor``."""
    return Path(os.environ.get(COMPILE_CACHE_ENV) or Path.home() / ".cache" / "rsrs" / "inductor").expanduser()


def use_compile_cache() -> Path:
    """Point inductor's on-disk caches (graphs, Triton kernels, autotuning) at :func:`compile_cache_dir`.

    Takes effect for compilations that follow; call it before anything in the process compiles. Inductor
    writes its entries atomically, so concurrent workers on one machine share the folder.
    """
    path = compile_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path

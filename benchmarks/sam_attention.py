"""SAM ViT-B attention layers on each fused kernel against transformers' SDPA layer: ms per call, error, kernels.

One global layer (``--images`` images of 64 x 64 tokens) and one windowed layer (25 windows of 14 x 14 per image)
of rsrefseg-b's SAM ViT-B at 1024 px, random weights with random relative-position tables, bf16. Each variant is
the layer's whole forward (qkv, relative-position tables, attention, proj), compiled unless ``--no-compile``.
Its error is the max abs difference to transformers' eager layer in float32 on the first two images, beside the
error of transformers' own SDPA layer in bf16 (what bf16 rounding alone costs). The device kernels each variant
runs are listed from a profile of one call. ``--backends`` also times the 'channels' kernel forced onto each SDPA
backend, to see which of them can take query/key channels wider than the values. ``--patch-embedding`` also times
the encoders' patch-embedding convolutions (kernel = stride) as cuDNN runs them, with ``cudnn.benchmark``, and as
one matmul over the patches.

GPU machine:  python -m benchmarks.sam_attention --backends --patch-embedding
CPU smoke:    python -m benchmarks.sam_attention --images 2 --iters 1 --no-compile --name smoke_tmp
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile
from transformers.models.sam.modeling_sam import SamVisionAttention, SamVisionSdpaAttention

from benchmarks._common import device_info, timed, write_result
from rsrs.model.config import get_model_config
from rsrs.model.fused_attention import fuse_sam_attention
from rsrs.model.patch_embedding import patch_convolutions_as_matmuls
from rsrs.model.rsrefseg.sam import sam_config

WINDOW = 14  # SAM ViT-B's windowed layers: 14 x 14 tokens, the 64 x 64 token map padded to 70 x 70 = 25 windows
BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32, help="images per call (a worker's batch)")
    parser.add_argument("--iters", type=int, default=10, help="timed calls per variant (after 3 warm-up calls)")
    parser.add_argument("--no-compile", action="store_true", help="time the layers uncompiled")
    parser.add_argument("--backends", action="store_true", help="also time 'channels' on each SDPA backend")
    parser.add_argument("--patch-embedding", action="store_true", help="also time the patch-embedding convolutions")
    parser.add_argument("--name", default="sam_attention", help="result file name under benchmarks/results/")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch._dynamo.config.cache_size_limit = 64  # one compile of the same forward per variant and layer
    config = sam_config(get_model_config("rsrefseg-b").sam).vision_config
    grid = config.image_size // config.patch_size  # 64 tokens a side
    result: dict = {**device_info(), "images": args.images, "compiled": not args.no_compile, "dtype": "bfloat16"}
    for layer_name, window, shape in [
        ("global", 0, (args.images, grid, grid)),
        ("windowed", WINDOW, (args.images * 25, WINDOW, WINDOW)),
    ]:
        result[layer_name] = measure_layer(config, window, shape, device=device, args=args)
        write_result(args.name, result, echo=False)
    if args.patch_embedding:  # SAM ViT-B: 16-pixel patches of 1024 px; SigLIP so400m/14: 14-pixel patches of 384 px
        result["patch_embedding"] = {
            f"{name}_{size}px": measure_patch_embedding(size, patch, width, images=args.images, device=device)
            for name, size, patch, width in [("sam", 1024, 16, 768), ("siglip", 384, 14, 1152)]
        }
    write_result(args.name, result)


def measure_patch_embedding(size: int, patch: int, width: int, *, images: int, device: str) -> dict:
    """ms per call of a patch-embedding convolution (kernel = stride = ``patch``) three ways, and their difference."""
    conv = torch.nn.Conv2d(3, width, patch, stride=patch).to(device=device, dtype=torch.bfloat16)
    pixels = torch.randn(images, 3, size, size, device=device, dtype=torch.bfloat16)
    as_matmul = copy.deepcopy(conv)
    patch_convolutions_as_matmuls(as_matmul)  # what accelerate() does to the encoders
    out: dict = {}
    with torch.inference_mode():
        expected = conv(pixels)
        out["cudnn_ms"] = round(timed(lambda: conv(pixels), iters=10) * 1000, 3)
        torch.backends.cudnn.benchmark = True
        out["cudnn_benchmark_ms"] = round(timed(lambda: conv(pixels), iters=10) * 1000, 3)
        torch.backends.cudnn.benchmark = False
        out["matmul_ms"] = round(timed(lambda: as_matmul(pixels), iters=10) * 1000, 3)
        out["matmul_max_abs_difference"] = float((as_matmul(pixels) - expected).abs().max())
        compiled = torch.compile(as_matmul)
        out["compiled_matmul_ms"] = round(timed(lambda: compiled(pixels), iters=10) * 1000, 3)
    print(f"patch embedding {size}px/{patch}: {json.dumps(out)}", flush=True)
    return out


def measure_layer(config, window: int, shape: tuple[int, int, int], *, device: str, args) -> dict:
    """Every variant of one SAM attention layer: ms per call, max abs error to float32 eager, top kernels."""
    torch.manual_seed(window)
    eager = SamVisionAttention(config, window).eval()
    with torch.no_grad():  # SAM initialises the tables to zero, which would hide their terms
        eager.rel_pos_h.normal_()
        eager.rel_pos_w.normal_()
    hidden = torch.randn(*shape, config.hidden_size, device=device)
    per_image = shape[0] // args.images
    check = slice(0, 2 * per_image)  # the first two images' windows (or images)
    with torch.inference_mode():
        reference = eager.to(device)(hidden[check])[0]
    stock = SamVisionSdpaAttention(config, window).eval()
    stock.load_state_dict(eager.state_dict())
    stock = stock.to(device=device, dtype=torch.bfloat16)
    hidden = hidden.to(torch.bfloat16)

    variants: list[tuple[str, str | None, str | None]] = [("transformers_sdpa", None, None)]
    variants += [(kernel, kernel, None) for kernel in ("sdpa", "flex", "channels", "triton")]
    if args.backends:
        variants += [(f"channels_{name}", "channels", name) for name in BACKENDS]
    out: dict = {"shape": list(shape), "tokens": shape[1] * shape[2]}
    for name, kernel, backend in variants:
        layer = copy.deepcopy(stock)
        if kernel is not None:
            fuse_sam_attention(layer, kernel=kernel)
        forward = layer if args.no_compile else torch.compile(layer, dynamic=False)
        backends = sdpa_kernel([BACKENDS[backend]]) if backend else contextlib.nullcontext()
        try:
            with torch.inference_mode(), backends:
                got = forward(hidden)[0][check]
                seconds = timed(lambda: forward(hidden), warmup=3, iters=args.iters)  # noqa: B023
                kernels = _top_kernels(lambda: forward(hidden), cuda=device == "cuda")  # noqa: B023
        except Exception as error:  # a backend that cannot take these shapes: say so, go on
            out[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
        else:
            out[name] = {
                "ms_per_call": round(seconds * 1000, 3),
                "max_abs_error": float((got.float() - reference).abs().max()),
                "top_kernels_ms": kernels,
            }
        print(f"{name} {json.dumps(out[name])}", flush=True)
        torch._dynamo.reset()
    base = out["transformers_sdpa"]["ms_per_call"]
    timed_variants = {name: entry for name, entry in out.items() if isinstance(entry, dict) and "ms_per_call" in entry}
    out["speedup_over_transformers_sdpa"] = {
        name: round(base / entry["ms_per_call"], 2) for name, entry in timed_variants.items()
    }
    return out


def _top_kernels(fn, *, cuda: bool) -> dict[str, float]:
    """The 4 device kernels (CPU operators off a GPU) with most self time in one call of ``fn``, in ms."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if not cuda or e.device_type.name == "CUDA"]
    events = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:4]
    return {e.key[:90]: round(getattr(e, attr) / 1000, 3) for e in events}


if __name__ == "__main__":
    main()

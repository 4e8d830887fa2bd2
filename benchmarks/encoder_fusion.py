"""Eager against fused and compiled image encoders (``rsrs.model.accelerate``), measured in one run.

For each variant of the same random-init model: ``encode_images`` tiles/s; the workers' model function
(``predict`` over a batch, replayed from CUDA graphs on a GPU, as ``batch_predictor`` runs it) tiles/s; the max
abs logit difference, and the shares of mask pixels and of stored uint8 codes (equal, within 1) equal to eager's;
the first call's seconds (compilation, or loading from the compile cache: run twice to see both); and the kernel
each attention layer runs. ``--trace`` writes a chrome trace of one un-graphed ``predict`` batch per variant
(``trace.json`` -> ``trace.eager.json``, ...; a ``.json.gz`` name is compressed) and the result lists each
variant's top device operators and, on a GPU, its kernel time by kind (``benchmarks/trace_kernels.py``).

Variants: eager always; ``--fused``: fused SAM attention (``--kernel``: which) and patch-embedding matmuls;
``--compile``: compiled encoders with transformers' attention and convolutions, and fused + compiled with
``--fused``, once per ``--mode`` (``default,coordinate-descent`` compiles each both ways); ``--no-gelu-epilogues``:
each fused variant again with SigLIP's MLP as transformers runs it (the fused variants have its bias and GELU in
cuBLASLt's matmul epilogue, as ``accelerate`` does by default); ``--approximate-gelu``: each fused variant again
with SAM's MLPs in that epilogue too (their exact GELU approximated); ``--unmerged-lora``: each fused variant again
with the LoRA adapters running beside their base layers (merged by default); ``--no-compiled-decoder``: each
compiled fused variant again with only its image encoders compiled (``accelerate`` compiles the prompter and mask
decoder too, by default); ``--triton-attention``: each fused variant again with SAM's attention on the 'triton'
kernel (``rsrs.model.relative_position_attention``); ``--fp8``: float8 linear layers (H100/H200; not the MLPs'
second layers), fused, uncompiled and compiled, each a fused variant for the options above. A variant's figures
are saved as soon as it is measured; ``--only a,b`` runs only the variants named (and eager, the reference).

GPU machine:  python -m benchmarks.encoder_fusion --fused --compile --trace $OUT/trace.json.gz
Demo model:   python -m benchmarks.encoder_fusion --demo --fused --compile --fp8   (real masks: the demo scene's
              16 tiles of 256² and its expressions, for the agreement figures; needs rasterio; ``--scene F`` cuts
              another uint8 RGB GeoTIFF, e.g. a real aerial image, into whole tiles instead; ``--dtype float32``
              compares the kernels without bf16's rounding)
CPU smoke:    python -m benchmarks.encoder_fusion --preset tiny --batch 2 --iters 1 --fused
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks._common import device_info, timed, write_result
from benchmarks.trace_kernels import kernel_milliseconds
from rsrs.model import batch_predictor, load_model
from rsrs.model.acceleration import COMPILE_MODES, accelerate, attention_kernels, compile_cache_dir
from rsrs.model.fused_attention import KERNELS
from rsrs.model.gelu_epilogue import has_gelu_epilogue
from rsrs.pipeline.resident import stored_codes

QUERY = "the red-roofed buildings"
DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="rsrefseg-b")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=5, help="timed calls per measurement (after 2 warm-up calls)")
    parser.add_argument("--fused", action="store_true", help="time fused SAM attention")
    parser.add_argument("--kernel", default="channels", choices=KERNELS, help="with --fused: SAM's attention kernel")
    parser.add_argument("--compile", action="store_true", help="time compiled encoders")
    parser.add_argument("--fp8", action="store_true", help="time float8 linear layers, uncompiled and compiled")
    parser.add_argument(
        "--no-gelu-epilogues",
        action="store_true",
        help="with --fused: each fused variant also without SigLIP's MLP GELU in the matmul epilogue",
    )
    parser.add_argument(
        "--approximate-gelu",
        action="store_true",
        help="with --fused: each fused variant also with SAM's MLPs in the GELU epilogue (tanh approximation)",
    )
    parser.add_argument(
        "--unmerged-lora",
        action="store_true",
        help="with --fused: each fused variant also with its LoRA adapters running beside their base layers",
    )
    parser.add_argument(
        "--no-compiled-decoder",
        action="store_true",
        help="with --fused: each compiled fused variant also with its prompter and mask decoder left eager",
    )
    parser.add_argument(
        "--triton-attention",
        action="store_true",
        help="with --fused: each fused variant also with SAM's attention on the 'triton' kernel",
    )
    parser.add_argument(
        "--mode",
        default="default",
        type=_modes,
        help=f"torch.compile modes, comma-separated, each a variant: {', '.join(COMPILE_MODES)}",
    )
    parser.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        help="run only these variants (comma-separated names; eager, the reference, always runs)",
    )
    parser.add_argument("--demo", action="store_true", help="the demo model on the demo scene and its expressions")
    parser.add_argument("--scene", type=Path, default=DEMO / "scene.tif", help="with --demo: a uint8 RGB(+) GeoTIFF")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="the weights' and activations' dtype (auto: bf16 on a GPU, as workers run)")  # fmt: skip
    parser.add_argument("--trace", type=Path, help="chrome trace path; the variant's name goes before .json")
    parser.add_argument("--name", default="encoder_fusion", help="result file name under benchmarks/results/")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    if args.demo:  # trained weights and a real scene: masks that depend on the tiles (random ones barely do)
        args.preset, (tiles, queries) = "demo", demo_tiles_and_queries(args.scene)
        args.batch, args.tile_size = tiles.shape[0], tiles.shape[-1]
        base = load_model("demo", device=device, dtype=args.dtype)
    else:
        g = torch.Generator().manual_seed(0)
        tiles = torch.randint(0, 256, (args.batch, 3, args.tile_size, args.tile_size), dtype=torch.uint8, generator=g)
        queries = [QUERY]
        base = load_model(args.preset, device=device, pretrained=False, dtype=args.dtype)
    result: dict = {
        "preset": args.preset,
        **device_info(),
        "weights": f"{'trained' if args.demo else 'random init'}, {str(base.dtype).removeprefix('torch.')}",
        "scene": args.scene.name if args.demo else "random tiles",
        "batch": args.batch,
        "tile_size": args.tile_size,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "compile_modes": args.mode,
        "compile_cache": str(compile_cache_dir()),
        "compile_cache_had_entries": compile_cache_dir().is_dir() and any(compile_cache_dir().iterdir()),
    }
    result["queries"] = len(queries)
    tiles = tiles.to(device)
    text = base.encode_texts(queries)

    eager_logits = None
    for name, options in _variants(args):
        model = base if options is None else accelerate(copy.deepcopy(base), **options)
        t0 = time.perf_counter()
        logits = _logits(model, tiles, text)
        first_call = time.perf_counter() - t0
        codes = _codes(model, tiles, text)
        if eager_logits is None:
            eager_logits, eager_codes = logits, codes
        code_steps = (codes.int() - eager_codes.int()).abs()
        entry = {
            "attention": attention_kernels(model),
            "gelu_epilogues": sum(has_gelu_epilogue(m) for m in model.modules()),
            "first_call_seconds": round(first_call, 1),
            "max_abs_logit_difference": float((logits - eager_logits).abs().max()),
            "mask_pixels_equal": round(float(((logits > 0) == (eager_logits > 0)).float().mean()), 6),
            "codes_equal": round(float((code_steps == 0).float().mean()), 6),  # the stored uint8 codes
            "codes_within_1": round(float((code_steps <= 1).float().mean()), 6),
        }
        entry |= _speeds(model, tiles, text, batch=args.batch, iters=args.iters)
        if args.trace:
            trace = _trace_path(args.trace, name)
            entry["top_operators_ms"] = _trace(model, tiles, text, trace)
            if device == "cuda":
                entry["kernel_ms"] = {k: v for k, v in kernel_milliseconds(trace).items() if k != "longest_ms"}
        result[name] = entry
        write_result(args.name, result, echo=False)  # so far: a later variant that fails or times out loses no figures
        print(f"{name}: {json.dumps(entry)}", flush=True)
        del model, logits, codes
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    if device == "cuda":
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    write_result(args.name, result)


def demo_tiles_and_queries(scene: Path, tile: int = 256) -> tuple[torch.Tensor, list[str]]:
    """``scene``'s first three bands cut into whole ``tile``-pixel tiles (N x 3 x tile x tile, uint8) and the texts
    of the demo scene's expressions."""
    import rasterio

    with rasterio.open(scene) as src:
        if src.count < 3 or src.dtypes[0] != "uint8":
            raise SystemExit(f"{scene}: need a uint8 raster of 3 or more bands, got {src.count} x {src.dtypes[0]}")
        pixels = torch.from_numpy(src.read([1, 2, 3]))  # 3 x H x W
    tiles = pixels.unfold(1, tile, tile).unfold(2, tile, tile)  # 3 x H/tile x W/tile x tile x tile
    tiles = tiles.permute(1, 2, 0, 3, 4).reshape(-1, 3, tile, tile)
    queries = [e["text"] for e in json.loads((DEMO / "expressions.json").read_text())]
    return tiles.contiguous(), queries


def _variants(args: argparse.Namespace) -> list[tuple[str, dict | None]]:
    """(name, accelerate's options) of the variants asked for; eager (None: the model as loaded) first.

    'compiled' keeps transformers' attention, convolutions and MLPs, runs the LoRA adapters unmerged and compiles
    only the image encoders; the fused variants add SAM's fused attention, the patch matmuls, SigLIP's GELU
    epilogues, merged adapters and (compiled) the compiled decoder, as ``accelerate`` does by default. Compiled
    variants come once per mode, named with the mode where it is not the default
    ('fused_compiled_max_autotune_no_cudagraphs')."""
    variants: list[tuple[str, dict | None]] = [("eager", None)]
    fused: list[tuple[str, dict]] = []  # each again with the options --no-gelu-epilogues etc. ask for
    if args.fused:
        fused.append(("fused", {"compile": False, "fused_attention": args.kernel}))
    for mode in args.mode if args.compile else []:
        suffix = "" if mode == "default" else "_" + mode.replace("-", "_")
        stock = dict.fromkeys(
            ("fused_attention", "patch_matmuls", "gelu_epilogues", "merge_lora", "compile_decoder"), False
        )  # what accelerate does beyond compiling the encoders, all off
        variants.append(("compiled" + suffix, {**stock, "mode": mode}))
        if args.fused:
            fused.append(("fused_compiled" + suffix, {"fused_attention": args.kernel, "mode": mode}))
    if args.fp8:  # uncompiled first: its agreement comes quickly, whatever compiling float8 then costs
        fused += [("fp8", {"compile": False, "fp8": True}), ("compiled_fp8", {"fp8": True})]
    for name, options in fused:
        variants.append((name, options))
        if args.no_gelu_epilogues:
            variants.append((f"{name}_no_gelu_epilogues", {**options, "gelu_epilogues": False}))
        if args.approximate_gelu:
            variants.append((f"{name}_approximate_gelu", {**options, "approximate_gelu": True}))
        if args.unmerged_lora:
            variants.append((f"{name}_unmerged_lora", {**options, "merge_lora": False}))
        if args.triton_attention:
            variants.append((f"{name}_triton", {**options, "fused_attention": "triton"}))
        if args.no_compiled_decoder and options.get("compile", True):
            variants.append((f"{name}_eager_decoder", {**options, "compile_decoder": False}))
    return [(name, options) for name, options in variants if options is None or not args.only or name in args.only]


def _modes(text: str) -> list[str]:
    """``--mode``'s comma-separated torch.compile modes, checked."""
    modes = text.split(",")
    if unknown := set(modes) - set(COMPILE_MODES):
        raise argparse.ArgumentTypeError(f"unknown mode(s) {sorted(unknown)}: choose from {', '.join(COMPILE_MODES)}")
    return modes


def _logits(model, tiles: torch.Tensor, text) -> torch.Tensor:
    """Mask logits B x Q x H x W (float32) of one batch, synchronised."""
    with torch.inference_mode():
        logits = model.decode(model.encode_images(tiles), text).logits.float()
    if tiles.is_cuda:
        torch.cuda.synchronize()
    return logits


def _codes(model, tiles: torch.Tensor, text) -> torch.Tensor:
    """The stored codes (B x Q x T x T uint8) of one batch: ``predict``'s probabilities, quantised as workers do."""
    with torch.inference_mode():
        return stored_codes(model.predict(tiles, text))


def _speeds(model, tiles: torch.Tensor, text, *, batch: int, iters: int) -> dict:
    """Tiles/s of encode_images and of the workers' batch function (graph replay on a GPU)."""
    with torch.inference_mode():
        encode = batch / timed(lambda: model.encode_images(tiles), iters=iters)
    fn = batch_predictor(model, text, batch=batch)  # CUDA graphs on a GPU
    warnings = _Warnings()
    logging.getLogger("rsrs.model.predictor").addHandler(warnings)
    try:
        rate = batch / timed(lambda: fn(tiles), iters=iters)
    finally:
        logging.getLogger("rsrs.model.predictor").removeHandler(warnings)
    # 4 significant digits: a 2-core CPU computes a real-size model at 0.1 tiles/s, a GPU the demo at 5000
    speeds = {"encode_images_tiles_per_s": float(f"{encode:.4g}"), "worker_predict_tiles_per_s": float(f"{rate:.4g}")}
    if tiles.is_cuda:
        speeds["cuda_graph"] = "eager fallback: " + warnings.messages[0] if warnings.messages else "captured"
    return speeds


class _Warnings(logging.Handler):
    """Collects the warnings of a logger (here: a CUDA graph capture that failed)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _trace(model, tiles: torch.Tensor, text, path: Path) -> dict[str, float]:
    """Chrome trace of one predict batch at ``path``; returns the 8 operators with most self time on the device."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if tiles.is_cuda else [])
    with profile(activities=activities) as prof:
        model.predict(tiles, text)
        if tiles.is_cuda:
            torch.cuda.synchronize()
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    attr = "self_device_time_total" if tiles.is_cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, attr), reverse=True)[:8]
    return {e.key[:80]: round(getattr(e, attr) / 1000, 2) for e in events}


def _trace_path(path: Path, variant: str) -> Path:
    """``trace.json`` -> ``trace.<variant>.json`` (also for ``.json.gz``)."""
    stem, dot, rest = path.name.partition(".json")
    return path.with_name(f"{stem}.{variant}{dot}{rest}" if dot else f"{path.name}.{variant}")


if __name__ == "__main__":
    main()

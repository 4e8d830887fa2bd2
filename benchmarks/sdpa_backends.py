"""Each SDPA backend on the attention shapes of the workers' image encoders: ms per call, uncompiled, bf16.

A compiled encoder runs whichever backend PyTorch prefers; inside ``torch.compile`` an ``sdpa_kernel`` context did
not change the kernel (benchmarks/results/sam_attention.json: 'channels_efficient' ran cuDNN's). On the H200,
SigLIP so400m's attention took 8.1 ms of a 32-tile batch on cuDNN for few FLOPs (head dim 72), and inductor copied
its queries, keys and values in element-wise kernels before it (3.2 ms more; benchmarks/results/traces_autotune/). So
this times the attention call alone, each backend forced, with queries/keys/values laid out two ways: as the
encoders make them (a transposed view of one projection, B x N x heads x d) and contiguous (B x heads x N x d).

Shapes (batch 32 tiles): SigLIP so400m/14 at 384 px, SigLIP2 so400m/16 at 512 px (rsrefseg2-l), and SAM ViT-B's
fused attention (rsrs.model.fused_attention: queries/keys wider than values by the position channels), global and
windowed.

GPU machine:  python -m benchmarks.sdpa_backends --name $OUT/sdpa_backends
CPU smoke:    python -m benchmarks.sdpa_backends --batch 1 --iters 1 --name /tmp/sdpa_smoke
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks._common import device_info, timed, write_result

BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
#: name -> (calls per tile, heads, tokens, query/key channels, value channels)
SHAPES = {
    "siglip_so400m_384": (1, 16, 729, 72, 72),
    "siglip2_so400m_512": (1, 16, 1024, 72, 72),
    "sam_b_global_fused": (1, 12, 4096, 192, 64),
    "sam_b_windowed_fused": (25, 12, 196, 96, 64),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="tiles per call (a worker's batch)")
    parser.add_argument("--iters", type=int, default=10, help="timed calls per measurement (after 2 warm-up calls)")
    parser.add_argument("--name", default="sdpa_backends", help="result file name under benchmarks/results/")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    warnings.filterwarnings("ignore", category=UserWarning, message=".*(kernel not used|requires q,k,v)")  # see entries
    result: dict = {**device_info(), "batch": args.batch, "dtype": "bfloat16", "compiled": False}
    for name, (per_tile, heads, tokens, qk, v) in SHAPES.items():
        batch = args.batch * per_tile
        entry: dict = {"shape": {"batch": batch, "heads": heads, "tokens": tokens, "qk_channels": qk, "v_channels": v}}
        for layout in ("projected", "contiguous"):
            q, k, value = attention_inputs(batch, heads, tokens, qk, v, layout=layout, device=device)
            for backend, choice in BACKENDS.items():
                if backend == "math" and device == "cuda" and tokens > 1024:
                    continue  # materialises B x heads x N x N scores: minutes and tens of GiB, not a contender
                try:
                    with torch.inference_mode(), sdpa_kernel([choice]):
                        seconds = timed(lambda: F.scaled_dot_product_attention(q, k, value), iters=args.iters)  # noqa: B023
                except RuntimeError as error:  # this backend cannot take the shape: say so, go on
                    entry[f"{layout}_{backend}_ms"] = f"cannot run: {str(error).splitlines()[0][:160]}"
                else:
                    entry[f"{layout}_{backend}_ms"] = round(seconds * 1000, 3)
        result[name] = entry
        print(f"{name}: {json.dumps(entry)}", flush=True)
        write_result(args.name, result, echo=False)
    write_result(args.name, result)


def attention_inputs(
    batch: int, heads: int, tokens: int, qk: int, v: int, *, layout: str, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random bf16 queries, keys (B x heads x N x qk) and values (B x heads x N x v).

    'projected': views of one B x N x heads x (2 qk + v) tensor, transposed, as an encoder's projection leaves them;
    'contiguous': each its own B x heads x N x d tensor."""
    g = torch.Generator(device=device).manual_seed(0)
    if layout == "projected":
        packed = torch.randn(batch, tokens, heads, 2 * qk + v, generator=g, device=device, dtype=torch.bfloat16)
        q, k, value = packed.split([qk, qk, v], dim=-1)
        return q.transpose(1, 2), k.transpose(1, 2), value.transpose(1, 2)
    shape = (batch, heads, tokens)
    return tuple(torch.randn(*shape, d, generator=g, device=device, dtype=torch.bfloat16) for d in (qk, qk, v))


if __name__ == "__main__":
    main()

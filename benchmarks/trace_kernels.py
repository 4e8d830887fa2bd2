"""Device time of a chrome trace's kernels by kind: where one batch's milliseconds go, read from a committed trace.

``benchmarks/encoder_fusion.py --trace`` writes one trace per variant (one un-graphed ``predict`` batch). This sums
their GPU kernels into the kinds that decide what to try next: bf16 and float8 matmuls (cuBLAS/cuBLASLt's ``nvjet`` and
CUTLASS kernels; a float8 one has ``qq``, ``e4m3`` or ``f8`` in its name), attention (cuDNN's, flash, memory-efficient,
rsrs's Triton kernel ``_attention_by_key_rows``), inductor's generated kernels (split into those that compute float8
row scales, an ``amax`` in their name, and the rest), and everything else (eager element-wise, copies, reductions).
Kernel names are the only input, so the figures can be recomputed from the traces under ``benchmarks/results/`` on any
machine.

Example:  python -m benchmarks.trace_kernels benchmarks/results/traces_fp8/trace.*.json.gz --name trace_kernels_fp8
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter
from pathlib import Path

from benchmarks._common import write_result

KINDS = ("matmul_bf16", "matmul_float8", "attention", "inductor_float8_scaling", "inductor_other", "other")


def kernel_kind(name: str) -> str:
    """The kind (one of :data:`KINDS`) of a CUDA kernel, from its name."""
    lowered = name.lower()
    if lowered.startswith(("nvjet", "cutlass")) or "gemm" in lowered or "xmma" in lowered:
        return "matmul_float8" if any(tag in lowered for tag in ("_qq", "e4m3", "f8")) else "matmul_bf16"
    if "sdpa" in lowered or "fmha" in lowered or lowered.startswith(("flash", "pytorch_flash", "_attention_by_key")):
        return "attention"
    if lowered.startswith("triton"):
        return "inductor_float8_scaling" if "amax" in lowered else "inductor_other"
    return "other"


def kernel_milliseconds(trace: Path) -> dict:
    """Total kernel ms of ``trace`` (a chrome trace, ``.json`` or ``.json.gz``), by kind, and its 8 longest kernels."""
    opener = gzip.open if trace.name.endswith(".gz") else open
    with opener(trace, "rt") as file:
        events = [e for e in json.load(file)["traceEvents"] if e.get("cat") == "kernel"]
    by_kind: Counter[str] = Counter({kind: 0.0 for kind in KINDS})
    by_name: Counter[str] = Counter()
    for event in events:
        ms = event["dur"] / 1000
        by_kind[kernel_kind(event["name"])] += ms
        by_name[event["name"][:100]] += ms
    return {
        "kernels": len(events),
        "total_ms": round(sum(by_kind.values()), 1),
        "ms_by_kind": {kind: round(by_kind[kind], 1) for kind in KINDS},
        "longest_ms": {name: round(ms, 2) for name, ms in by_name.most_common(8)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("traces", nargs="+", type=Path, help="chrome traces (.json or .json.gz)")
    parser.add_argument("--name", help="also write the result as benchmarks/results/<name>.json")
    args = parser.parse_args()
    result = {f"{trace.parent.name}/{trace.name}": kernel_milliseconds(trace) for trace in args.traces}
    if args.name:
        write_result(args.name, result)
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""The workers' model function eager against replayed from CUDA graphs, alone and beside a busy Python thread.

In a Dask worker other threads read tiles and hand results on while the model runs; every eager kernel launch then
waits for the GIL. This measures what that costs the model (uint8 codes, host tiles in, host codes out, as
``rsrs.pipeline.resident`` runs it) with and without CUDA graphs, and compares their codes (a weak check at random
init, whose masks are nearly uniform; the GPU tests compare masks of the trained demo model).

Run on the GPU machine:  python -m benchmarks.graphs_gpu [--preset rsrefseg-b] [--batch 16] [--name graphs_gpu]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks._common import busy_python_thread, device_info, timed, write_result
from benchmarks.run_gpu import QUERIES, random_init_config
from rsrs.model import batch_predictor, load_model
from rsrs.pipeline.resident import stored_codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="rsrefseg-b")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--name", default="graphs_gpu", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(random_init_config(args.preset, Path(tmp)), device="cuda")
    text = model.encode_texts(QUERIES[:1])
    tiles = torch.randint(0, 256, (args.batch, 3, args.tile_size, args.tile_size), dtype=torch.uint8)

    eager_codes = batch_predictor(model, text, batch=args.batch, postprocess=stored_codes, graphs=False)
    graphed_codes = batch_predictor(model, text, batch=args.batch, postprocess=stored_codes)  # what workers run
    runs: dict[str, Callable[[], torch.Tensor]] = {
        "eager": lambda: eager_codes(tiles.to(model.device)).cpu(),
        "graphed": lambda: graphed_codes(tiles.to(model.device)).cpu(),
    }
    result: dict = {"preset": args.preset, **device_info(), "weights": "random init, bf16", "batch": args.batch}
    result["max_code_difference"] = int((runs["eager"]().int() - runs["graphed"]().int()).abs().max())
    for name, run in runs.items():
        result[f"{name}_tiles_per_s"] = round(args.batch / timed(run, iters=6), 2)
    with busy_python_thread(args.tile_size):
        for name, run in runs.items():
            result[f"{name}_beside_busy_thread_tiles_per_s"] = round(args.batch / timed(run, iters=6), 2)
    result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    write_result(args.name, result)


if __name__ == "__main__":
    main()

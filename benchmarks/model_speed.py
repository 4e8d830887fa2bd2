"""A real-size preset (random init, bf16 weights): encode_images tiles/s, decode cost per query, memory.

Run on the GPU machine, from the repository root:
    python -m benchmarks.model_speed [--preset rsrefseg-b] [--batches 8,32] [--compile] [--name model_speed]
Prints one JSON document (also written to benchmarks/results/NAME.json) naming the device.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from benchmarks._common import device_info, timed, write_result
from rsrs.model import accelerate, load_model, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="rsrefseg-b")
    parser.add_argument("--batches", default="8,32", help="encode_images batch sizes to time")
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd image encoders")
    parser.add_argument("--name", default="model_speed", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    tile = args.tile_size
    result: dict = {"preset": args.preset, **device_info(), "weights": "random init, bf16"}

    t0 = time.perf_counter()
    model = load_model(args.preset, device="cuda", dtype="bfloat16", pretrained=False)
    result["build_seconds"] = round(time.perf_counter() - t0, 1)

    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(model, f"{tmp}/ft.safetensors", config=model.config)
        result["finetune_checkpoint_mb"] = round(os.path.getsize(path) / 1e6, 1)
        result["finetune_checkpoint_dtype"] = "bfloat16 (weights as held; float32 training doubles it)"

    def encode_rate(batch: int) -> float:
        tiles = torch.randint(0, 256, (batch, 3, tile, tile), dtype=torch.uint8, device="cuda")
        with torch.inference_mode():
            seconds = timed(lambda: model.encode_images(tiles), warmup=2, iters=5)
        return batch / seconds

    torch.cuda.reset_peak_memory_stats()
    result["encode_images_tiles_per_s"] = {str(b): round(encode_rate(b), 1) for b in batches}
    result[f"encode_images_peak_gib_batch{max(batches)}"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    # Decode cost: B=8 tiles, Q queries; the slope over Q is the marginal time of one more query.
    tiles = torch.randint(0, 256, (8, 3, tile, tile), dtype=torch.uint8, device="cuda")
    with torch.inference_mode():
        feats = model.encode_images(tiles)
        decode_ms = {}
        for q in (1, 2, 4, 8, 16):
            texts = model.encode_texts([f"query number {i}" for i in range(q)])
            decode_ms[q] = 1000 * timed(lambda texts=texts: model.decode(feats, texts), warmup=2, iters=5)
        encode_text_ms = 1000 * timed(lambda: model.encode_texts([f"q {i}" for i in range(16)]), warmup=1, iters=3)
        predict_ms = {
            q: 1000 * timed(lambda q=q: model.predict(tiles, [f"query {i}" for i in range(q)]), warmup=1, iters=3)
            for q in (1, 5)
        }
    slope = (decode_ms[16] - decode_ms[1]) / 15
    result["decode_ms_batch8"] = {str(q): round(v, 2) for q, v in decode_ms.items()}
    result["decode_marginal_ms_per_query_per_tile"] = round(slope / 8, 3)
    result["encode_texts_ms_16_queries"] = round(encode_text_ms, 2)
    result["predict_ms_batch8"] = {str(q): round(v, 1) for q, v in predict_ms.items()}
    result["predict_ratio_5_queries_vs_1"] = round(predict_ms[5] / predict_ms[1], 3)
    result["peak_gib_overall"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    if args.compile:
        accelerate(model, compile=True)  # both image encoders, transformers' attention on SDPA
        t0 = time.perf_counter()
        encode_rate(max(batches))
        result["compile_first_call_seconds"] = round(time.perf_counter() - t0, 1)
        result["compiled_encode_images_tiles_per_s"] = {str(b): round(encode_rate(b), 1) for b in batches}
    write_result(args.name, result)


if __name__ == "__main__":
    main()

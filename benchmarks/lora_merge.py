"""LoRA adapters merged into their base weights (as workers run them) against running beside them: image encoding.

A CPU worker changes nothing else in the model (fused attention gains nothing measurable there), so this times
``encode_images`` of the model as loaded against the same model with ``merge_lora_adapters``: one call of each in
turn, ``--repeats`` times, the order swapped every round, on a fresh random-init model whose ``lora_B`` weights are
drawn small and non-zero (peft starts them at zero, which would make merging fold nothing). It reports the median
seconds per tile of each, their ratio, and how far the merged features are from the unmerged ones.

CPU:          python -m benchmarks.lora_merge --preset rsrefseg2-l --name lora_merge_cpu_rsrefseg2-l
GPU machine:  python -m benchmarks.lora_merge --preset rsrefseg-b --batch 16 --repeats 10 --name $OUT/lora_merge
(for compiled encoders: benchmarks/encoder_fusion.py --fused --compile --unmerged-lora)
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from benchmarks._common import device_info, timed, write_result
from rsrs.model import load_model
from rsrs.model.lora import merge_lora_adapters

#: Standard deviation of the drawn lora_B weights.
LORA_B_STD = 0.02


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="rsrefseg-b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=4, help="timed calls of each model, alternating")
    parser.add_argument("--name", default="lora_merge", help="result file name under benchmarks/results/")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    unmerged = load_model(args.preset, device=device, pretrained=False)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for name, param in unmerged.named_parameters():
            if ".lora_B." in name:
                param.copy_(LORA_B_STD * torch.randn(param.shape, generator=generator))
    merged = copy.deepcopy(unmerged)
    layers = merge_lora_adapters(merged)
    models = {"unmerged": unmerged, "merged": merged}
    tiles = torch.randint(0, 256, (args.batch, 3, args.tile_size, args.tile_size), dtype=torch.uint8, device=device)

    with torch.inference_mode():
        features = {name: model.encode_images(tiles) for name, model in models.items()}  # also the warm-up
        seconds: dict[str, list[float]] = {name: [] for name in models}
        for repeat in range(args.repeats):
            for name in list(models)[:: 1 if repeat % 2 == 0 else -1]:
                model = models[name]
                seconds[name].append(timed(lambda m=model: m.encode_images(tiles), warmup=0, iters=1) / args.batch)

    per_tile = {name: statistics.median(times) for name, times in seconds.items()}
    difference = {
        part: float(
            (getattr(features["merged"], part) - getattr(features["unmerged"], part)).abs().max()
            / getattr(features["unmerged"], part).abs().max()
        )
        for part in ("sam", "siglip")
    }
    result = device_info() | {
        "preset": args.preset,
        "weights": f"random init, lora_B drawn from N(0, {LORA_B_STD}^2), {next(merged.parameters()).dtype}",
        "batch": args.batch,
        "tile_size": args.tile_size,
        "lora_layers_merged": layers,
        "encode_images_seconds_per_tile": {name: [round(t, 4) for t in times] for name, times in seconds.items()},
        "median_seconds_per_tile": {name: round(t, 4) for name, t in per_tile.items()},
        "speedup_merged": round(per_tile["unmerged"] / per_tile["merged"], 3),
        "max_abs_feature_difference_relative_to_max": difference,
    }
    write_result(args.name, result)


if __name__ == "__main__":
    main()

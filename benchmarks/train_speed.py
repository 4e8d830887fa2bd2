"""Training throughput of a real-size preset (random init) with LoRA: samples/s and peak GPU memory.

The step is the one `rsrs train` runs: bf16 autocast forward, BCE + Dice on full-resolution logits, backward,
gradient clipping, AdamW over the trained parameters. Run on the GPU machine:
    python -m benchmarks.train_speed [--preset rsrefseg-b] [--batch 8] [--size 512]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._common import device_info, write_result
from rsrs.model import load_model
from rsrs.model.losses import bce_dice_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="rsrefseg-b")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=512, help="training image size (RRSIS-D images are 800)")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    model = load_model(args.preset, device="cuda", dtype="float32", pretrained=False).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.05)
    g = torch.Generator(device="cuda").manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), device="cuda", dtype=torch.uint8, generator=g)
    masks = (torch.rand(args.batch, args.size, args.size, device="cuda", generator=g) > 0.7).float()
    sentences = [f"the building number {i} next to the road" for i in range(args.batch)]

    def step() -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(images, sentences).logits[:, 0]
        loss = bce_dice_loss(logits, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        return loss.total.item()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    write_result(
        f"train_speed_{args.preset}",
        {
            "preset": args.preset,
            **device_info(),
            "weights": "random init, fp32 master weights, bf16 autocast",
            "batch": args.batch,
            "image_size": args.size,
            "trainable_params": sum(p.numel() for p in trainable),
            "seconds_per_step": round(seconds, 4),
            "samples_per_s": round(args.batch / seconds, 2),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        },
    )


if __name__ == "__main__":
    main()

"""Does a model tell apart two expressions that refer to different objects of one category on one chip?

For every such pair ("the leftmost car" / "the rightmost car", "the red-roofed building" / "the largest
building") on fresh ``rsrs synth`` chips, by pair of grammar forms: the IoU between the two predicted masks (1 =
the model ignored what differs), each prediction's IoU with its own truth and with the other's, the correlation
of the two AttnPrompter activation maps, and the cosine of the two pooled text features. It separates a model
that cannot read the distinguishing words (text cosine near 1) from one that reads them but cannot place them.

Run from the repository root (CPU is fine for the demo model):
    python -m demo_training.pairs [--model demo] [--chips 300] [--seed 11] [--name demo_pairs]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import write_result
from rsrs.model import load_model
from rsrs.pipeline.datasets import open_dataset
from rsrs.pipeline.datasets.base import ReferringSample
from rsrs.pipeline.synth import write_chip_dataset
from rsrs.pipeline.synth.chips import chip_split


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def same_category_pairs(samples: list[ReferringSample]) -> list[tuple[ReferringSample, ReferringSample]]:
    """Pairs of one chip's expressions that name one category but different objects."""
    return [
        (a, b)
        for a, b in itertools.combinations(samples, 2)
        if a.category == b.category and a.metadata["target"] != b.metadata["target"]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="demo", help="preset, model config or checkpoint")
    parser.add_argument("--chips", type=int, default=300)
    parser.add_argument("--seed", type=int, default=11, help="synth seed (the demo trained on seeds 0 and 1)")
    parser.add_argument("--name", default="demo_pairs", help="result file name under demo_training/logs/")
    args = parser.parse_args()
    model = load_model(args.model, device="cpu").eval()
    rows: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        manifest = write_chip_dataset(tmp, count=args.chips * 4, per_chip=4, seed=args.seed)
        by_chip: dict[int, list[ReferringSample]] = defaultdict(list)
        for split in sorted({chip_split(i) for i in range(args.chips)}):
            for sample in open_dataset("manifest", Path(manifest), split):
                by_chip[sample.metadata["chip"]].append(sample)
        for samples in by_chip.values():
            pairs = same_category_pairs(samples)
            if not pairs:
                continue
            image = torch.from_numpy(samples[0].image).permute(2, 0, 1)[None]  # 1 x 3 x H x W uint8
            features = model.encode_images(image)
            for a, b in pairs:
                text = model.encode_texts([a.sentence, b.sentence])
                out = model.decode(features, text)
                pred = (out.logits[0] > 0).numpy()  # 2 x H x W
                act = out.activation[0].reshape(2, -1).float().numpy()
                cosine = torch.nn.functional.cosine_similarity(text.pooled[0], text.pooled[1], dim=0).item()
                form = "/".join(sorted((a.metadata["form"], b.metadata["form"])))
                rows[form].append(
                    (
                        iou(pred[0], pred[1]),
                        (iou(pred[0], a.mask) + iou(pred[1], b.mask)) / 2,
                        (iou(pred[0], b.mask) + iou(pred[1], a.mask)) / 2,
                        float(np.corrcoef(act)[0, 1]),
                        cosine,
                    )
                )
    names = ("iou_between_predictions", "iou_with_own_truth", "iou_with_other_truth", "activation_corr", "text_cos")
    result: dict = {"model": args.model, "device": "cpu", "chips": args.chips, "seed": args.seed, "by_forms": {}}
    for form, values in sorted(rows.items(), key=lambda kv: -len(kv[1])):
        means = np.nanmean(np.array(values), axis=0)
        result["by_forms"][form] = {"pairs": len(values)} | {
            n: round(float(m), 3) for n, m in zip(names, means, strict=True)
        }
    write_result(args.name, result, folder=Path(__file__).parent / "logs")


if __name__ == "__main__":
    main()

"""How far a bf16 demo model's masks are from float32's, with SAM's positional encodings in bf16 and in float32.

SAM's random-Fourier positional encodings (``rsrs.model.fourier_features``) take sin/cos of tens of radians. A model
cast outright to bf16 computes them in bf16; ``load_model`` now keeps their matrix in float32, so they are computed
in float32 and only the rest of the model runs in bf16. For the shipped demo model this reports, per variant:
- on a real image (``--scene``, default ``cogeo.tif``, cut into 256² tiles, the demo scene's 37 expressions): the
  share of mask pixels equal to float32's and the mean absolute logit difference;
- on the demo scene (1024², its true masks): gIoU and cIoU of the 37 expressions, each tile answering the
  scene-wide expression alone (so position expressions score low in every variant alike).

Variants: ``float32``; ``bf16_encodings_bf16`` (the float32 model cast with ``.to(torch.bfloat16)``, as models
loaded before); ``bf16`` (``load_model(dtype="bfloat16")`` now). Eager, on the machine it runs on.

CPU:  python -m benchmarks.fourier_precision --name fourier_precision_cpu
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import rasterio
import torch

from benchmarks._common import device_info, write_result
from benchmarks.encoder_fusion import DEMO, demo_tiles_and_queries
from rsrs.model import load_model
from rsrs.workflows.metrics import score_sample, summarize

REAL_SCENE = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "imagery" / "cogeo.tif"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", type=Path, default=REAL_SCENE, help="a real uint8 RGB(+) GeoTIFF")
    parser.add_argument("--batch", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--name", default="fourier_precision", help="result file name under benchmarks/results/")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    reference = load_model("demo", device=device, dtype="float32")
    variants = {
        "float32": reference,
        "bf16_encodings_bf16": copy.deepcopy(reference).to(torch.bfloat16),
        "bf16": load_model("demo", device=device, dtype="bfloat16"),
    }
    real_tiles, queries = demo_tiles_and_queries(args.scene)
    demo_tiles, _ = demo_tiles_and_queries(DEMO / "scene.tif")
    truth = _true_masks()
    result: dict = {**device_info(), "model": "demo", "real_scene": args.scene.name, "queries": len(queries)}
    real_reference = demo_reference = None
    for name, model in variants.items():
        real = _logits(model, real_tiles, queries, batch=args.batch, device=device)
        demo = _mosaic(_logits(model, demo_tiles, queries, batch=args.batch, device=device), truth.shape[-1])
        if real_reference is None:
            real_reference, demo_reference = real, demo
        result[name] = {
            "real_mask_pixels_equal_float32": _equal(real, real_reference),
            "real_mean_abs_logit_difference": round(float((real - real_reference).abs().mean()), 4),
            "demo_mask_pixels_equal_float32": _equal(demo, demo_reference),
            **_ious(demo > 0, truth),
        }
        print(f"{name}: {json.dumps(result[name])}", flush=True)
    write_result(args.name, result)


def _logits(model, tiles: torch.Tensor, queries: list[str], *, batch: int, device: str) -> torch.Tensor:
    """N x Q x T x T float32 mask logits on the CPU, ``batch`` tiles at a time."""
    with torch.inference_mode():
        text = model.encode_texts(queries)
        return torch.cat(
            [
                model.decode(model.encode_images(tiles[i : i + batch].to(device)), text).logits.float().cpu()
                for i in range(0, len(tiles), batch)
            ]
        )


def _mosaic(logits: torch.Tensor, size: int) -> torch.Tensor:
    """Row-major tiles' logits N x Q x T x T as Q x size x size."""
    n, q, t, _ = logits.shape
    side = size // t
    return logits.reshape(side, side, q, t, t).permute(2, 0, 3, 1, 4).reshape(q, size, size)


def _true_masks() -> torch.Tensor:
    """The demo scene's true mask of each expression, Q x H x W bool, in expressions.json's order."""
    ids = [e["id"] for e in json.loads((DEMO / "expressions.json").read_text())]
    masks = []
    for expression in ids:
        with rasterio.open(DEMO / "masks" / f"{expression}.tif") as src:
            masks.append(torch.from_numpy(src.read(1) > 0))
    return torch.stack(masks)


def _equal(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of mask pixels (logit > 0) equal to the reference's."""
    return round(float(((logits > 0) == (reference > 0)).float().mean()), 6)


def _ious(masks: torch.Tensor, truth: torch.Tensor) -> dict:
    """gIoU and cIoU of Q x H x W masks against the truth, one sample per expression (rsrs.workflows.metrics)."""
    scores = [score_sample(str(i), m.numpy(), t.numpy()) for i, (m, t) in enumerate(zip(masks, truth, strict=True))]
    summary = summarize(scores)
    return {"demo_giou": round(summary["gIoU"], 4), "demo_ciou": round(summary["cIoU"], 4)}


if __name__ == "__main__":
    main()

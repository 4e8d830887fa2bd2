"""How long one of Python's full collections stops a worker that holds a loaded model, before and after freezing.

A full collection walks every tracked object while it holds the GIL, so for its length a worker's reads, launches
and event loop all stop. This loads a resident model as a worker does (``--compile``: compiled encoders), runs one
batch, and times full collections (``gc.collect()``, the median of ``--repeats``) with the objects that loading
left alive tracked, then after :func:`rsrs.pipeline.resident.freeze_loaded_objects` (what a worker does once set
up).

Run from the repository root:  python -m benchmarks.gc_pause [--preset tiny] [--device cpu] [--compile]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import device_info, write_result
from benchmarks.read_speed import reading_machine
from benchmarks.run_gpu import QUERIES, random_init_config
from rsrs.pipeline.resident import ModelRef, freeze_loaded_objects, release_resident, resident_model


def full_collection_s(repeats: int) -> float:
    """Median seconds of ``repeats`` full collections."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        gc.collect()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="a preset (random init) or 'demo'")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="model.compile: compiled image encoders")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--name", default="gc_pause", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    result: dict = {**device_info(), **reading_machine(), "preset": args.preset, "compile": args.compile}
    with tempfile.TemporaryDirectory() as tmp:
        source = args.preset if args.preset in ("tiny", "demo") else str(random_init_config(args.preset, Path(tmp)))
        resident = resident_model(ModelRef(source, device=args.device, compile=args.compile))
        batch = torch.zeros((args.batch, 3, args.tile_size, args.tile_size), dtype=torch.uint8)
        resident.predictor(QUERIES[:1], args.batch)(batch.to(resident.device))  # compiles or captures
        result["tracked_objects"] = len(gc.get_objects())
        result["full_collection_ms"] = round(1000 * full_collection_s(args.repeats), 4)
        freeze_loaded_objects()
        result["frozen_objects"] = gc.get_freeze_count()
        result["full_collection_ms_frozen"] = round(1000 * full_collection_s(args.repeats), 4)
        release_resident()
    write_result(args.name, result)


if __name__ == "__main__":
    main()

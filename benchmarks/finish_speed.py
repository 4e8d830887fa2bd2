"""What finishing one predicted tile costs a worker's finisher, by stage, for 1 and 5 queries (CPU only).

A GPU worker hands each tile's uint8 codes to its finisher pool, which writes the Zarr chunk, polygonises and
saves the polygon sidecar; with 5 queries that work grew 3-4x on an H200 (benchmarks/results/run_gpu*.json) while
the model's time barely moved. Four kinds of masks per query, on a 960² core (a 1024 tile less its overlap):
``empty`` (the query is absent: the usual case), ``sparse`` (three small objects), ``blobs`` (about 100 smooth
objects over the whole tile), ``noisy`` (thousands of speckles, as an untrained model gives). Milliseconds per
tile, the median of ``--repeats`` calls.

Run:  python -m benchmarks.finish_speed [--repeats 5] [--name finish_speed]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from affine import Affine
from scipy import ndimage

from benchmarks._common import write_result
from rsrs.pipeline.geometry import PixelWindow, RasterGrid
from rsrs.pipeline.mosaic import create_mosaic, write_core
from rsrs.pipeline.polygons import polygonise_codes, save_tile

CORE = 960
THRESHOLD = 0.5
KINDS = ("empty", "sparse", "blobs", "noisy")


def masks(kind: str, queries: int, rng: np.random.Generator) -> np.ndarray:
    """Q x CORE x CORE uint8 codes of one kind (see the module's docstring)."""
    if kind in ("empty", "sparse"):
        codes = np.full((queries, CORE, CORE), 10, np.uint8)
        if kind == "sparse":
            y, x = np.ogrid[:CORE, :CORE]
            for cy, cx in rng.integers(60, CORE - 60, size=(3, 2)):
                codes[:, (y - cy) ** 2 + (x - cx) ** 2 < 40**2] = 230
        return codes
    sigma = 12.0 if kind == "blobs" else 1.5
    field = ndimage.gaussian_filter(rng.standard_normal((queries, CORE, CORE)), sigma=(0, sigma, sigma))
    centre = 0.3 if kind == "blobs" else 0.5
    return np.clip((field / field.std() * 0.5 + centre) * 254, 0, 254).astype(np.uint8)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 1)


def stage_ms(
    store: Path, core: PixelWindow, codes: np.ndarray, scene_shape: tuple[int, int], sidecar: Path, repeats: int
) -> dict:
    """Median milliseconds of each finishing stage for one tile's ``codes`` (Q x CORE x CORE), and its polygons."""

    def polygonise():
        return polygonise_codes(codes, key="k", core=core, scene_shape=scene_shape, threshold=THRESHOLD)

    polygons = polygonise()
    stages = {
        "write_core": median_ms(lambda: write_core(store, "s", core, codes), repeats),
        "polygonise": median_ms(polygonise, repeats),
        "save_tile": median_ms(lambda: save_tile(polygons, sidecar), repeats),
    }
    return stages | {"total": round(sum(stages.values()), 1), "polygons": len(polygons)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--name", default="finish_speed", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    core = PixelWindow(row_off=CORE, col_off=CORE, height=CORE, width=CORE)  # an inner tile of a 4 x 4 grid
    grid = RasterGrid(shape=(4 * CORE, 4 * CORE), transform=Affine(0.6, 0, 500000, 0, -0.6, 4200000), crs="EPSG:32633")
    result: dict = {"device": "cpu", "cpu_count": os.cpu_count(), "core_px": CORE, "ms_per_tile": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for queries in (1, 5):
            store = Path(tmp) / f"q{queries}.zarr"
            ids = [f"q{i}" for i in range(queries)]
            create_mosaic(store, "s", grid, query_ids=ids, query_texts=ids, chunk_size=CORE, fingerprint="", source="")
            for kind in KINDS:
                codes, sidecar = masks(kind, queries, rng), Path(tmp) / "t.parquet"
                stages = stage_ms(store, core, codes, grid.shape, sidecar, args.repeats)
                result["ms_per_tile"][f"{kind}_{queries}q"] = stages
    for kind in KINDS:
        table = result["ms_per_tile"]
        result[f"ratio_5q_vs_1q_{kind}"] = round(table[f"{kind}_5q"]["total"] / table[f"{kind}_1q"]["total"], 2)
    write_result(args.name, result)


if __name__ == "__main__":
    main()

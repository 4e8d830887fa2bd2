"""Reading a task's tiles: one GDAL handle per tile against one handle per run of neighbouring tiles.

Tiles' reads overlap by their context, and a window rarely starts on a block edge, so reading tile by tile
decodes many blocks two or three times. In a worker, the reads also compete for the GIL with the threads that
feed the model: each read gives it up and must win it back several times. This reads every tile of a synthetic
scene (tiled, deflate, 512-pixel blocks, as ``benchmarks.run_rss`` writes it) in the workers' groups, with the
workers' thread pool, both ways, alone and beside a busy Python thread, and checks the two give equal pixels.

Run from the repository root:  python -m benchmarks.read_speed [--size 8192] [--tile-size 1024] [--batch 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio

from benchmarks._common import busy_python_thread, write_result
from benchmarks.run_rss import write_scene
from rsrs.pipeline.finisher import IO_THREADS
from rsrs.pipeline.reading import read_tile, read_tiles
from rsrs.pipeline.scenes import Scene, scene_from_raster
from rsrs.pipeline.tiling import Tile, batched, plan_tiles

Reader = Callable[[ThreadPoolExecutor, Scene, tuple[Tile, ...]], tuple[np.ndarray, np.ndarray]]


def per_tile(io: ThreadPoolExecutor, scene: Scene, tiles: tuple[Tile, ...]) -> tuple[np.ndarray, np.ndarray]:
    """One read per tile, in parallel (how workers read before runs)."""
    reads = list(io.map(lambda t: read_tile(scene, t.read), tiles))
    return np.stack([r[0] for r in reads]), np.stack([r[1] for r in reads])


def per_run(io: ThreadPoolExecutor, scene: Scene, tiles: tuple[Tile, ...]) -> tuple[np.ndarray, np.ndarray]:
    """One open handle per run of neighbouring tiles (shared decoded blocks), runs in parallel (how workers read)."""
    return read_tiles(scene, [t.read for t in tiles], map_fn=io.map, parallel=IO_THREADS)


def ms_per_tile(read: Reader, scene: Scene, groups: list[tuple[Tile, ...]]) -> tuple[float, float]:
    """Wall and CPU (all threads of this process) milliseconds per tile to read ``groups`` one after another."""
    with ThreadPoolExecutor(IO_THREADS) as io:
        read(io, scene, groups[0])  # warm: imports, GDAL drivers
        wall, cpu = time.perf_counter(), time.process_time()
        for group in groups:
            read(io, scene, group)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tiles = sum(len(g) for g in groups)
    return round(wall * 1000 / tiles, 2), round(cpu * 1000 / tiles, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="tiles per model batch (one read group)")
    parser.add_argument("--name", default="read_speed", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    result: dict = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gdal": rasterio.__gdal_version__,
        "io_threads": IO_THREADS,
        "scene_px": args.size,
        "tile_size": args.tile_size,
        "overlap": args.overlap,
        "batch": args.batch,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.tif"
        write_scene(path, args.size)
        scene = scene_from_raster(str(path))
        groups = batched(list(plan_tiles(scene.grid, tile_size=args.tile_size, overlap=args.overlap)), args.batch)
        result["tiles"] = sum(len(g) for g in groups)
        with ThreadPoolExecutor(IO_THREADS) as io:
            a, b = per_tile(io, scene, groups[1 % len(groups)]), per_run(io, scene, groups[1 % len(groups)])
        result["equal_pixels"] = bool(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))
        for name, read in {"per_tile": per_tile, "per_run": per_run}.items():
            result[f"{name}_ms_per_tile"], result[f"{name}_cpu_ms_per_tile"] = ms_per_tile(read, scene, groups)
        with busy_python_thread(args.tile_size):  # its own CPU time is counted too: compare wall times here
            for name, read in {"per_tile": per_tile, "per_run": per_run}.items():
                result[f"{name}_beside_busy_thread_ms_per_tile"] = ms_per_tile(read, scene, groups)[0]
    result["speedup"] = round(result["per_tile_ms_per_tile"] / result["per_run_ms_per_tile"], 2)
    result["speedup_beside_busy_thread"] = round(
        result["per_tile_beside_busy_thread_ms_per_tile"] / result["per_run_beside_busy_thread_ms_per_tile"], 2
    )
    write_result(args.name, result)


if __name__ == "__main__":
    main()

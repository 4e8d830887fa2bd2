"""What handing a batch's codes to a process finisher costs the GPU worker's own process: the pool's pipe against
shared memory (:class:`rsrs.pipeline.finisher.Finisher`).

The worker's process also reads tiles and launches the model, so every millisecond it spends pickling codes is taken
from them. 16 tiles (a batch) of Q x 960² uint8 codes, for 1 and 5 queries, go to a 2-process finisher whose
function only touches them, with what ``finish_tile`` gets beside them: the task's
:class:`~rsrs.pipeline.tasks.TileOutputs` and the tile (``shared_memory_whole_task``: the whole task of 64 tiles
instead, as before it). Milliseconds of the worker's CPU (all its threads) and of wall time per batch, the median of
``--repeats`` (the first, which creates the shared blocks that later batches reuse, included). ``finished_tiles_back``:
16 tiles of about 100 objects each (``benchmarks.finish_speed``'s blobs) polygonised in the finisher, which sends back
their polygons (``polygons``, as before) or only what the task keeps of each (``counts``,
:class:`~rsrs.pipeline.tasks.FinishedTile`); the worker unpickles what comes back, holding the GIL.

Run:  python -m benchmarks.finish_handoff [--repeats 7] [--name finish_handoff]
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks._common import write_result
from benchmarks.finish_speed import masks
from benchmarks.run_rss import write_scene
from rsrs.pipeline.finisher import Finisher
from rsrs.pipeline.polygons import TilePolygons, polygonise_codes
from rsrs.pipeline.resident import ModelRef
from rsrs.pipeline.scenes import scene_from_raster
from rsrs.pipeline.tasks import BatchTask, FinishedTile, TileOutputs
from rsrs.pipeline.tiling import Tile, plan_tiles

CORE, BATCH = 960, 16


def touch(task: object, tile: Tile, codes: np.ndarray) -> int:
    """In a finisher process: read one code (the hand-off is what is measured)."""
    return int(codes[0, 0, 0])


def polygons_back(outputs: TileOutputs, tile: Tile, codes: np.ndarray) -> TilePolygons:
    """In a finisher process: polygonise the codes and send the polygons back."""
    return polygonise_codes(codes, key=tile.key, core=tile.core, scene_shape=outputs.scene_shape,
                            threshold=outputs.threshold)  # fmt: skip


def counts_back(outputs: TileOutputs, tile: Tile, codes: np.ndarray) -> FinishedTile:
    """In a finisher process: polygonise the codes and send back what a task keeps of the tile."""
    polygons = polygons_back(outputs, tile, codes)
    return FinishedTile(tile.key, len(polygons), polygons.skipped, 0.0)


def a_task(folder: Path) -> BatchTask:
    """A task of 64 tiles of a 16384² scene, as `rsrs run` makes them."""
    write_scene(folder / "scene.tif", 16384)
    scene = scene_from_raster(str(folder / "scene.tif"))
    return BatchTask(scene=scene, tiles=tuple(plan_tiles(scene.grid, tile_size=1024, overlap=64))[:64],
                     query_texts=("the dark ponds",), model=ModelRef("demo"), store=str(folder / "masks.zarr"),
                     tiles_dir=str(folder / "tiles"), threshold=0.5, batch_size=16)  # fmt: skip


def batch_ms(
    pool: Finisher, tiles: list[np.ndarray], args: tuple[object, Tile], repeats: int, fn: Callable = touch
) -> dict:
    """Median worker-CPU and wall milliseconds to hand ``tiles`` (with ``args``) over to ``fn`` and see them done."""
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        for done in [pool.submit(fn, *args, codes=codes) for codes in tiles]:
            done.result()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {
        "worker_cpu_ms": round(1000 * statistics.median(cpu), 1),
        "wall_ms": round(1000 * statistics.median(wall), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--name", default="finish_handoff", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    result: dict = {"device": "cpu", "cpu_count": os.cpu_count(), "core_px": CORE, "tiles_per_batch": BATCH}
    with tempfile.TemporaryDirectory() as tmp:
        task = a_task(Path(tmp))
    outputs, whole = (TileOutputs.of(task), task.tiles[0]), (task, task.tiles[0])
    result["pickled_bytes_per_tile"] = {"outputs": len(pickle.dumps(outputs)), "whole_task": len(pickle.dumps(whole))}
    for queries in (1, 5):
        tiles = [rng.integers(0, 255, (queries, CORE, CORE), dtype=np.uint8) for _ in range(BATCH)]
        result[f"{queries}q"] = {}
        ways = (("pipe", False, outputs), ("shared_memory", True, outputs), ("shared_memory_whole_task", True, whole))
        for way, shared, finish_args in ways:
            pool = Finisher("processes", gpus=max(1, (os.cpu_count() or 2) // 4), shared=shared)  # 2 processes
            try:
                result[f"{queries}q"][way] = batch_ms(pool, tiles, finish_args, args.repeats)
            finally:
                pool.shutdown()
        times = result[f"{queries}q"]
        result[f"ratio_worker_cpu_pipe_vs_shared_{queries}q"] = round(
            times["pipe"]["worker_cpu_ms"] / times["shared_memory"]["worker_cpu_ms"], 2
        )
    blob_tile = task.tiles[0]
    h, w = blob_tile.core.shape  # 896²: tiles of 1024 with 64 of overlap
    blobs = [masks("blobs", 1, rng)[:, :h, :w] for _ in range(BATCH)]
    result["objects_per_tile"] = [len(polygons_back(outputs[0], blob_tile, codes)) for codes in blobs]
    pool = Finisher("processes", gpus=max(1, (os.cpu_count() or 2) // 4))
    try:
        result["finished_tiles_back"] = {
            way: batch_ms(pool, blobs, (outputs[0], blob_tile), args.repeats, fn)
            for way, fn in (("polygons", polygons_back), ("counts", counts_back))
        }
    finally:
        pool.shutdown()
    write_result(args.name, result)


if __name__ == "__main__":
    main()

"""Tile-batch inference, the body of one Dask task: read tiles -> model -> write cores -> polygonise.

A task gets a :class:`BatchTask` (paths, ids and small specs, never weights or pixels) and returns a
:class:`BatchResult` (polygons and numbers). The model lives in a per-process cache holding one model and
the text features of its queries, so a worker loads it once (see ``rsrs.workflows.cluster``'s plugin,
which warms this cache when a worker starts). While the model runs on one batch, a thread reads the next
and another writes and polygonises the previous one.

Each tile is finished by writing its Zarr chunk and then its polygon sidecar ``<tiles_dir>/<key>.parquet``;
the sidecar's presence is the resume marker, so a tile interrupted between the two is simply redone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rsrs.pipeline.mosaic import decode_probability, encode_probability, write_core
from rsrs.pipeline.polygons import TilePolygons, polygonise_core, save_tile
from rsrs.pipeline.reading import read_tile
from rsrs.pipeline.scenes import Scene
from rsrs.pipeline.tiling import Tile

if TYPE_CHECKING:
    from rsrs.model import RSRefSeg, TextFeatures


@dataclass(frozen=True)
class ModelRef:
    """Which model a worker loads: a preset name, model config path or checkpoint path, and the device."""

    source: str
    device: str = "auto"


@dataclass(frozen=True)
class BatchTask:
    """One task: some tiles of one scene and where their outputs go (all paths absolute)."""

    scene: Scene
    tiles: tuple[Tile, ...]
    query_texts: tuple[str, ...]
    model: ModelRef
    store: str
    tiles_dir: str
    threshold: float
    batch_size: int


@dataclass
class BatchResult:
    """What a task sends back: each tile's polygons (scene pixel frame) and timings in seconds."""

    scene_id: str
    polygons: list[TilePolygons] = field(default_factory=list)
    computed: int = 0
    skipped: int = 0
    read_s: float = 0.0
    model_s: float = 0.0
    write_s: float = 0.0


@dataclass
class _Resident:
    spec: ModelRef
    model: RSRefSeg
    texts: dict[tuple[str, ...], TextFeatures] = field(default_factory=dict)


IO_THREADS = min(8, os.cpu_count() or 1)  # per task: parallel tile reads and chunk writes
_RESIDENT: _Resident | None = None  # one model per process; replaced (not accumulated) on a new spec


def resident_model(spec: ModelRef, query_texts: Sequence[str]) -> tuple[RSRefSeg, TextFeatures]:
    """This process's model for ``spec`` and the text features of ``query_texts``, loaded/encoded once."""
    global _RESIDENT
    if _RESIDENT is None or _RESIDENT.spec != spec:
        from rsrs.model import load_model

        _RESIDENT = None  # let the old model go before loading a new one
        model = load_model(spec.source, device=spec.device)
        if model.device.type == "cuda":  # pay CUDA/cuBLAS/allocator set-up once here, not in the first tiles
            import torch

            size = model.sam_image_size
            model.predict(torch.zeros(1, 3, size, size, dtype=torch.uint8), ["warm-up"])
        _RESIDENT = _Resident(spec=spec, model=model)
    key = tuple(query_texts)
    if key not in _RESIDENT.texts:
        import torch

        with torch.no_grad():
            _RESIDENT.texts = {key: _RESIDENT.model.encode_texts(list(key))}  # keep only the current job's
    return _RESIDENT.model, _RESIDENT.texts[key]


def tile_path(tiles_dir: str | Path, tile: Tile) -> Path:
    """Where a tile's polygon sidecar (its done-marker) lives."""
    return Path(tiles_dir) / f"{tile.key}.parquet"


def run_batch(task: BatchTask) -> BatchResult:
    """Run the model over ``task.tiles`` in model batches of ``task.batch_size``, overlapping I/O with it."""
    import torch

    model, text = resident_model(task.model, task.query_texts)
    result = BatchResult(scene_id=task.scene.id)
    groups = [task.tiles[i : i + task.batch_size] for i in range(0, len(task.tiles), task.batch_size)]
    Path(task.tiles_dir).mkdir(parents=True, exist_ok=True)
    with (
        ThreadPoolExecutor(IO_THREADS, "rsrs-io") as io,
        ThreadPoolExecutor(1, "rsrs-read") as reader,
        ThreadPoolExecutor(1, "rsrs-write") as writer,
    ):
        pending_read = reader.submit(_read_group, io, task.scene, groups[0]) if groups else None
        writes: list[Future[list[TilePolygons]]] = []
        for g in range(len(groups)):
            assert pending_read is not None
            (rgb, valid), read_s = pending_read.result()  # B x 3 x T x T uint8, B x T x T bool
            result.read_s += read_s
            if g + 1 < len(groups):
                pending_read = reader.submit(_read_group, io, task.scene, groups[g + 1])
            has_data = np.array([valid[b][t.core_in_read.slices()].any() for b, t in enumerate(groups[g])])
            probs = None
            if has_data.any():
                start = time.perf_counter()
                images = torch.from_numpy(rgb[has_data])
                probs = model.predict(images, text).float().cpu().numpy()  # B' x Q x T x T
                result.model_s += time.perf_counter() - start
            writes.append(writer.submit(_finish_group, io, task, groups[g], has_data, probs, valid))
        for w in writes:
            tiles, write_s = w.result()
            result.polygons.extend(tiles)
            result.write_s += write_s
    result.skipped = sum(t.skipped for t in result.polygons)
    result.computed = len(result.polygons) - result.skipped
    return result


def _read_group(
    io: ThreadPoolExecutor, scene: Scene, tiles: Sequence[Tile]
) -> tuple[tuple[np.ndarray, np.ndarray], float]:
    """Read tiles' windows in parallel (GDAL releases the GIL): (B x 3 x T x T uint8, B x T x T bool), seconds."""
    start = time.perf_counter()
    reads = list(io.map(lambda t: read_tile(scene, t.read), tiles))
    rgb = np.stack([r[0] for r in reads])
    valid = np.stack([r[1] for r in reads])
    return (rgb, valid), time.perf_counter() - start


def _finish_group(
    io: ThreadPoolExecutor,
    task: BatchTask,
    tiles: Sequence[Tile],
    has_data: np.ndarray,
    probs: np.ndarray | None,
    valid: np.ndarray,
) -> tuple[list[TilePolygons], float]:
    """Write each tile's core chunk, polygonise it and mark it done (tiles in parallel, each its own chunk)."""
    start = time.perf_counter()
    rows = np.cumsum(has_data) - 1  # row of each tile in ``probs`` (only tiles with data were predicted)

    def finish(b: int, tile: Tile) -> TilePolygons:
        if not has_data[b]:
            polygons = TilePolygons.empty(tile.key, skipped=True)
        else:
            assert probs is not None
            inner = tile.core_in_read.slices()
            core_probs = probs[rows[b]][(slice(None), *inner)]  # Q x h x w
            core_valid = valid[b][inner]  # h x w
            codes = encode_probability(core_probs, core_valid)
            write_core(Path(task.store), task.scene.id, tile.core, codes)
            polygons = polygonise_core(  # from the stored values, so thresholding the mosaic agrees
                decode_probability(codes),
                core_valid,
                key=tile.key,
                core=tile.core,
                scene_shape=task.scene.grid.shape,
                threshold=task.threshold,
            )
        save_tile(polygons, tile_path(task.tiles_dir, tile))
        return polygons

    out = list(io.map(finish, range(len(tiles)), tiles))
    return out, time.perf_counter() - start

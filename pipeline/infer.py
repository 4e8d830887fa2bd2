"""Tile-batch inference, the body of one Dask task: read tiles -> model -> write cores -> polygonise.

A task gets a :class:`BatchTask` (paths, ids and small specs, never weights or pixels) and returns a
:class:`BatchResult` (polygons and numbers). Each process keeps one resident model, the text features of
its queries and a *finisher* pool (see ``rsrs.workflows.cluster``'s plugin, which warms them when a worker
starts). While the model runs on one batch, a thread reads the next; each predicted tile goes, as uint8
codes, to the finisher, which writes its Zarr chunk, polygonises it and marks it done.

On a GPU the finisher is a pool of processes: polygonising and Zarr writes hold the GIL, and in the model's
process they would delay every kernel launch. Two tasks may share one GPU (each asks for half of it), so
one reads while the other runs the model; a lock keeps the model to one batch at a time (on a GPU it is held
only while the batch's work is queued: the copies to and from the GPU overlap the other task's batch).

Each tile is finished by writing its Zarr chunk and then its polygon sidecar ``<tiles_dir>/<key>.parquet``;
the sidecar's presence is the resume marker, so a tile interrupted between the two is simply redone.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rsrs.pipeline.mosaic import mark_nodata, quantise, write_core
from rsrs.pipeline.polygons import TilePolygons, polygonise_codes, save_tile
from rsrs.pipeline.reading import read_tiles
from rsrs.pipeline.scenes import Scene
from rsrs.pipeline.tiling import Tile

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from rsrs.model import RSRefSeg, TextFeatures

    CodesFn = Callable[[torch.Tensor], torch.Tensor]


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
    model_s: float = 0.0  # GPU time of the model's batches on a GPU, else the wall time it ran
    write_s: float = 0.0


@dataclass
class _Resident:
    spec: ModelRef
    model: RSRefSeg
    finisher: Executor
    texts: dict[tuple[str, ...], TextFeatures] = field(default_factory=dict)  # the current job's queries only
    predictors: dict[int, CodesFn] = field(default_factory=dict)  # by batch size, for those queries


IO_THREADS = min(8, os.cpu_count() or 1)  # per task: parallel reads and tile finishing (GDAL releases the GIL)
_RESIDENT: _Resident | None = None  # one model per process; replaced (not accumulated) on a new spec
_LOAD_LOCK = threading.Lock()  # tasks sharing a worker load the model once
_MODEL_LOCK = threading.Lock()  # and run it one batch at a time


def resident_model(
    spec: ModelRef, query_texts: Sequence[str], *, warm_up: tuple[int, int] | None = None
) -> tuple[RSRefSeg, TextFeatures]:
    """This process's model for ``spec`` and the text features of ``query_texts``, loaded/encoded once.

    ``warm_up=(batch, tile)``: on a GPU, prepare the job's batch shape when the model is loaded (CUDA graph
    capture, allocator), so that set-up is paid here rather than in the first tiles.
    """
    import torch

    resident = _with_texts(spec, tuple(query_texts))
    if warm_up is not None and resident.model.device.type == "cuda":
        batch, tile = warm_up
        predict = _predictor(resident, tuple(query_texts), batch)
        with _MODEL_LOCK:
            predict(torch.zeros(batch, 3, tile, tile, dtype=torch.uint8, device=resident.model.device))
    return resident.model, resident.texts[tuple(query_texts)]


def _with_texts(spec: ModelRef, query_texts: tuple[str, ...]) -> _Resident:
    """This process's resident model with ``query_texts`` encoded (a new query set replaces the old one)."""
    import torch

    resident = _resident(spec)
    with _LOAD_LOCK:
        if query_texts not in resident.texts:
            with torch.no_grad():
                resident.texts = {query_texts: resident.model.encode_texts(list(query_texts))}
            resident.predictors = {}
    return resident


def _predictor(resident: _Resident, query_texts: tuple[str, ...], batch: int) -> CodesFn:
    """This process's :func:`codes_predictor` for ``query_texts`` (encoded by :func:`_with_texts`), made once.

    On a GPU it replays CUDA graphs (see ``rsrs.model.graphs``): in a worker whose other threads read and hand
    on tiles, eager kernel launches wait for the GIL and the GPU idles.
    """
    with _LOAD_LOCK:
        if batch not in resident.predictors:
            resident.predictors[batch] = codes_predictor(resident.model, resident.texts[query_texts], batch=batch)
        return resident.predictors[batch]


def codes_predictor(model: RSRefSeg, text: TextFeatures, *, batch: int, graphs: bool = True) -> CodesFn:
    """The model's probabilities quantised on its device: B x 3 x T x T uint8 -> B x Q x T x T uint8 codes.

    On a GPU (and with ``graphs``), replayed from CUDA graphs captured for batches of ``batch`` tiles.
    """
    import torch

    def codes(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return quantise(model.predict(images, text)).to(torch.uint8)

    if not graphs or model.device.type != "cuda":
        return codes
    from rsrs.model.graphs import GraphedBatches

    return GraphedBatches(codes, batch=batch)


def _resident(spec: ModelRef) -> _Resident:
    """Load (once) the model for ``spec`` and start the finisher pool that suits its device."""
    global _RESIDENT
    with _LOAD_LOCK:
        if _RESIDENT is None or _RESIDENT.spec != spec:
            from rsrs.model import load_model

            if _RESIDENT is not None:  # let the old model and pool go before loading new ones
                _RESIDENT.finisher.shutdown()
                _RESIDENT = None
            model = load_model(spec.source, device=spec.device)
            _RESIDENT = _Resident(spec=spec, model=model, finisher=_finisher(model.device.type))
        return _RESIDENT


def _finisher(device_type: str) -> Executor:
    """Processes that finish tiles when the model is on a GPU (and this process may have children), else threads.

    Dask's worker processes are daemons unless ``distributed.worker.daemon`` is False (``rsrs run``'s own
    clusters set it); a daemon cannot start processes, so there tiles are finished in threads.
    """
    if device_type != "cuda" or multiprocessing.current_process().daemon:
        return ThreadPoolExecutor(IO_THREADS, "rsrs-finish")
    import torch

    n = max(1, min(8, (os.cpu_count() or 2) // (2 * max(1, torch.cuda.device_count()))))
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with_parent,
                               initargs=(os.getpid(),))  # fmt: skip
    list(pool.map(_warm_finisher, [0.5] * n))  # start all n now (imports included), not in the first tiles
    return pool


def _warm_finisher(seconds: float) -> None:
    """A no-op task, long enough that each finisher process gets one (unpickling it imports this module)."""
    time.sleep(seconds)


def _exit_with_parent(parent: int) -> None:
    """In a finisher process: exit when the worker that started it is gone (e.g. killed), never linger."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="rsrs-parent-watch", daemon=True).start()


def tile_path(tiles_dir: str | Path, tile: Tile) -> Path:
    """Where a tile's polygon sidecar (its done-marker) lives."""
    return Path(tiles_dir) / f"{tile.key}.parquet"


def run_batch(task: BatchTask) -> BatchResult:
    """Run the model over ``task.tiles`` in model batches of ``task.batch_size``, overlapping I/O with it."""
    resident = _with_texts(task.model, task.query_texts)
    predict = _predictor(resident, task.query_texts, task.batch_size)
    result = BatchResult(scene_id=task.scene.id)
    groups = [task.tiles[i : i + task.batch_size] for i in range(0, len(task.tiles), task.batch_size)]
    Path(task.tiles_dir).mkdir(parents=True, exist_ok=True)
    finishing: list[Future[tuple[TilePolygons, float]]] = []
    with ThreadPoolExecutor(IO_THREADS, "rsrs-io") as io, ThreadPoolExecutor(1, "rsrs-read") as reader:
        pending_read = reader.submit(_read_group, io, task.scene, groups[0]) if groups else None
        for g, group in enumerate(groups):
            assert pending_read is not None
            (rgb, valid), read_s = pending_read.result()  # B x 3 x T x T uint8, B x T x T bool
            result.read_s += read_s
            if g + 1 < len(groups):
                pending_read = reader.submit(_read_group, io, task.scene, groups[g + 1])
            has_data = np.array([valid[b][t.core_in_read.slices()].any() for b, t in enumerate(group)])
            codes = None
            if has_data.any():
                tiles = rgb if has_data.all() else rgb[has_data]  # B' x 3 x T x T (no copy when all have data)
                codes, model_s = _predict_codes(predict, resident.model.device, tiles)  # B' x Q x T x T uint8
                result.model_s += model_s
            rows = np.cumsum(has_data) - 1  # row of each tile in ``codes`` (only tiles with data were predicted)
            for b, tile in enumerate(group):
                inner = (slice(None), *tile.core_in_read.slices())
                core = mark_nodata(codes[rows[b]][inner].copy(), valid[b][inner[1:]]) if has_data[b] else None
                finishing.append(resident.finisher.submit(finish_tile, task, tile, core))
    for done in finishing:
        polygons, seconds = done.result()
        result.polygons.append(polygons)
        result.write_s += seconds
    result.skipped = sum(t.skipped for t in result.polygons)
    result.computed = len(result.polygons) - result.skipped
    return result


def _predict_codes(predict: CodesFn, device: torch.device, rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """``predict``'s codes for host tiles, and the seconds the model ran on them.

    rgb: B x 3 x T x T uint8  ->  B x Q x T x T uint8 codes
    """
    import torch

    if device.type == "cuda":
        return _predict_codes_cuda(predict, device, rgb)
    with _MODEL_LOCK:
        start = time.perf_counter()
        codes = predict(torch.from_numpy(rgb).to(device)).numpy()
        return codes, time.perf_counter() - start


def _predict_codes_cuda(predict: CodesFn, device: torch.device, rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """:func:`_predict_codes` on a GPU, with the copies to and from it outside the model's turn.

    Tiles go up and codes come down on a side stream, through pinned memory, while another thread's batch
    computes; the lock is held only to queue the model's work (one graph replay), never to wait for the GPU,
    so the GPU goes from one batch to the next without a gap. Seconds: GPU time between CUDA events.
    """
    import torch

    side = torch.cuda.Stream(device)
    host_in = torch.from_numpy(rgb).pin_memory()
    with torch.cuda.stream(side):
        images = host_in.to(device, non_blocking=True)  # B x 3 x T x T uint8
    began, ended = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with _MODEL_LOCK:
        main = torch.cuda.current_stream(device)
        main.wait_stream(side)
        images.record_stream(main)  # allocated on ``side``, read on ``main``
        began.record(main)
        codes = predict(images)  # B x Q x T x T uint8, on the GPU
        ended.record(main)
    side.wait_event(ended)
    with torch.cuda.stream(side):
        host_out = torch.empty(codes.shape, dtype=codes.dtype, pin_memory=True)
        host_out.copy_(codes, non_blocking=True)
        codes.record_stream(side)  # allocated on ``main``, read on ``side``
    side.synchronize()
    return host_out.numpy(), began.elapsed_time(ended) / 1000


def _read_group(
    io: ThreadPoolExecutor, scene: Scene, tiles: Sequence[Tile]
) -> tuple[tuple[np.ndarray, np.ndarray], float]:
    """Read tiles' windows, runs of neighbours in parallel: (B x 3 x T x T uint8, B x T x T bool), seconds."""
    start = time.perf_counter()
    batch = read_tiles(scene, [t.read for t in tiles], map_fn=io.map)
    return batch, time.perf_counter() - start


def finish_tile(task: BatchTask, tile: Tile, codes: np.ndarray | None) -> tuple[TilePolygons, float]:
    """Write a tile's core chunk, polygonise it and mark it done; codes: Q x h x w uint8 of the core, or None
    for a tile without valid pixels (nothing written, only the marker). Returns its polygons and seconds taken.
    """
    start = time.perf_counter()
    if codes is None:
        polygons = TilePolygons.empty(tile.key, skipped=True)
    else:
        write_core(Path(task.store), task.scene.id, tile.core, codes)
        polygons = polygonise_codes(
            codes, key=tile.key, core=tile.core, scene_shape=task.scene.grid.shape, threshold=task.threshold
        )
    save_tile(polygons, tile_path(task.tiles_dir, tile))
    return polygons, time.perf_counter() - start

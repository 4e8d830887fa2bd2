"""Tile-batch inference, the body of one Dask task: read tiles -> model -> write cores -> polygonise.

A task gets a :class:`BatchTask` (paths, ids and small specs, never weights or pixels) and returns a
:class:`BatchResult` (the tiles finished, numbers, and the failure that stopped it, if any). While the model runs on
one batch, a thread reads the next and the task hands the one before over: each predicted tile goes, as uint8 codes,
to the process's finisher pool, which writes its Zarr chunk, polygonises it and marks it done.

Each tile is finished by writing its Zarr chunk and then its polygon sidecar ``<tiles_dir>/<key>.parquet``; the
sidecar's presence is the resume marker, so a tile interrupted between the two is simply redone. A write that fails
(a full or read-only disk) raises :class:`~rsrs.core.errors.OutputError`, one line naming the path. A window that
cannot be read (a corrupt block) ends the task with a :class:`TileFailure` value, not an exception: the tiles
before it stay finished, and the scene's fate (skipped or the run stopped) is the client's decision.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsrs.core.files import output_error
from rsrs.pipeline.finisher import IO_THREADS
from rsrs.pipeline.geometry import PixelWindow
from rsrs.pipeline.mosaic import mark_nodata, write_core
from rsrs.pipeline.network import DEFAULT_HTTP, HttpOptions, use_http_options
from rsrs.pipeline.polygons import TilePolygons, polygonise_codes, save_tile
from rsrs.pipeline.reading import SceneReader, TileReadError
from rsrs.pipeline.resident import GROUPS_QUEUED, ModelRef, QueuedCodes, ResidentModel, resident_model
from rsrs.pipeline.scenes import Scene
from rsrs.pipeline.tiling import Tile


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
    http: HttpOptions = DEFAULT_HTTP  # retries and timeouts of remote reads


@dataclass(frozen=True)
class TileOutputs:
    """What finishing a tile needs of its task: where its chunk and polygons go, and the polygons' threshold.

    A GPU worker pickles it with every tile it hands to a finisher process, holding the GIL, so it is small: 397
    bytes against 6,384 for a task of 64 tiles with its scene. Handing a batch of 16 tiles over cost the worker 6.2
    ms of CPU against 14.4 with the whole task (16.3 against 21.1 with 5 queries; 2-core CPU,
    ``benchmarks/results/finish_handoff_outputs.json``).
    """

    store: str
    scene_id: str
    scene_shape: tuple[int, int]
    tiles_dir: str
    threshold: float

    @classmethod
    def of(cls, task: BatchTask) -> TileOutputs:
        """``task``'s outputs."""
        return cls(task.store, task.scene.id, task.scene.grid.shape, task.tiles_dir, task.threshold)


@dataclass(frozen=True)
class TileFailure:
    """Why a task stopped: the scene window that could not be read and GDAL's message."""

    window: PixelWindow
    message: str

    def __str__(self) -> str:
        w = self.window
        return f"rows {w.row_off}-{w.row_end}, cols {w.col_off}-{w.col_end}: {self.message}"


@dataclass(frozen=True)
class FinishedTile:
    """What finishing a tile sends back: its key, the objects its sidecar holds, whether it had no valid pixels,
    and the seconds finishing took. Its polygons stay in the sidecar: a GPU worker's process would unpickle them from
    its finisher processes holding the GIL its reads and launches need. A batch of 16 tiles of about 80 objects cost
    the worker 33-56 ms of CPU with their polygons sent back, against 12-14 ms now (two runs, this project's 2-core
    CPU, ``benchmarks/finish_handoff.py``, ``finish_handoff_results_back.json``)."""

    key: str
    objects: int
    skipped: bool
    seconds: float


@dataclass
class BatchResult:
    """What a task sends back: each finished tile (its polygons are in its sidecar), timings in seconds, the
    device the model ran on, and the failure that stopped the task early, if any."""

    scene_id: str
    tiles: list[FinishedTile] = field(default_factory=list)
    read_s: float = 0.0
    model_s: float = 0.0  # GPU time of the model's batches on a GPU, else the wall time it ran
    device: str = ""
    failure: TileFailure | None = None

    @property
    def skipped(self) -> int:
        """Tiles finished without valid pixels (only their marker written)."""
        return sum(t.skipped for t in self.tiles)

    @property
    def computed(self) -> int:
        """Tiles the model computed and finished."""
        return len(self.tiles) - self.skipped

    @property
    def write_s(self) -> float:
        """Seconds the finishers spent on this task's tiles."""
        return sum(t.seconds for t in self.tiles)


def tile_path(tiles_dir: str | Path, tile: Tile) -> Path:
    """Where a tile's polygon sidecar (its done-marker) lives."""
    return Path(tiles_dir) / f"{tile.key}.parquet"


def run_batch(task: BatchTask) -> BatchResult:
    """Run the model over ``task.tiles`` in model batches of ``task.batch_size``, overlapping I/O with it."""
    use_http_options(task.http)
    resident = resident_model(task.model)
    with resident.timed("task", task.tiles[0].key if task.tiles else ""):
        return _run_batch(resident, task)


def _run_batch(resident: ResidentModel, task: BatchTask) -> BatchResult:
    result = BatchResult(scene_id=task.scene.id, device=str(resident.device))
    groups = [task.tiles[i : i + task.batch_size] for i in range(0, len(task.tiles), task.batch_size)]
    try:
        Path(task.tiles_dir).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(Path(task.tiles_dir), err) from None
    finishing: list[Future[FinishedTile]] = []
    outputs = TileOutputs.of(task)
    queued: deque[_QueuedGroup] = deque()  # on the model, oldest first
    scene_reader = SceneReader(
        task.scene, threads=IO_THREADS, empty=resident.host_batch, niceness=resident.read_niceness
    )
    with scene_reader, ThreadPoolExecutor(1, "rsrs-read") as reader:
        pending_read = reader.submit(_read_group, resident, scene_reader, groups[0]) if groups else None
        for g, group in enumerate(groups):
            assert pending_read is not None
            try:
                with resident.timed("read_wait", group[0].key):  # the task's wait for its read, to when it resumes
                    (rgb, valid), read_s = pending_read.result()  # B x 3 x T x T uint8, B x T x T bool
            except TileReadError as err:
                result.failure = TileFailure(window=err.window, message=err.reason)
                break
            result.read_s += read_s
            if g + 1 < len(groups):
                pending_read = reader.submit(_read_group, resident, scene_reader, groups[g + 1])
            queued.append(_queue_group(resident, task, group, rgb, valid))
            if len(queued) == GROUPS_QUEUED:
                finishing += _hand_over(resident, outputs, queued.popleft(), result)
        while queued:  # the groups read before the last one (or before a failed read) are finished too
            finishing += _hand_over(resident, outputs, queued.popleft(), result)
    with resident.timed("finishing", task.tiles[-1].key if task.tiles else ""):  # the task's last writes
        result.tiles += [done.result() for done in finishing]
    return result


@dataclass(frozen=True)
class _QueuedGroup:
    """A group of tiles on the model: which of them have data (only those were queued) and their valid pixels."""

    tiles: Sequence[Tile]
    has_data: np.ndarray  # B bool
    valid: np.ndarray  # B x T x T bool
    codes: QueuedCodes | None  # of the tiles with data; None when none has


def _queue_group(
    resident: ResidentModel, task: BatchTask, tiles: Sequence[Tile], rgb: np.ndarray, valid: np.ndarray
) -> _QueuedGroup:
    """Queue the tiles that have valid pixels in their core on the model (rgb: B x 3 x T x T uint8)."""
    with resident.timed("queue", tiles[0].key):
        has_data = np.array([valid[b][t.core_in_read.slices()].any() for b, t in enumerate(tiles)])
        codes = None
        if has_data.any():
            with_data = rgb  # B' x 3 x T x T: the tiles with data, gathered into another host batch if not all
            if not has_data.all():
                shape = (int(has_data.sum()), *rgb.shape[1:])
                with_data = np.compress(has_data, rgb, axis=0, out=resident.host_batch(shape))
            codes = resident.queue_codes(task.query_texts, task.batch_size, with_data)
        return _QueuedGroup(tiles, has_data, valid, codes)


def _hand_over(
    resident: ResidentModel, outputs: TileOutputs, group: _QueuedGroup, result: BatchResult
) -> list[Future[FinishedTile]]:
    """Wait for a group's codes and hand each tile's core to the finisher (a tile without data gets its marker)."""
    codes = None
    if group.codes is not None:
        codes, model_s = group.codes.result()  # B' x Q x T x T uint8
        result.model_s += model_s
    rows = np.cumsum(group.has_data) - 1  # row of each tile in ``codes`` (only tiles with data were predicted)
    finishing = []
    with resident.timed("hand_over", group.tiles[0].key):
        for b, tile in enumerate(group.tiles):
            inner = (slice(None), *tile.core_in_read.slices())
            core = mark_nodata(codes[rows[b]][inner], group.valid[b][inner[1:]]) if group.has_data[b] else None
            finishing.append(resident.finisher.submit(finish_tile, outputs, tile, codes=core))  # marked in place
    return finishing


def _read_group(
    resident: ResidentModel, scene_reader: SceneReader, tiles: Sequence[Tile]
) -> tuple[tuple[np.ndarray, np.ndarray], float]:
    """Read tiles' windows in the worker's read turn: (B x 3 x T x T uint8, B x T x T bool), seconds."""
    with resident.read_turn(scene_reader.scene):
        start = time.perf_counter()
        with resident.timed("read", tiles[0].key):
            batch = scene_reader.read([t.read for t in tiles])
        return batch, time.perf_counter() - start


def finish_tile(outputs: TileOutputs, tile: Tile, codes: np.ndarray | None) -> FinishedTile:
    """Write a tile's core chunk, polygonise it and mark it done (its sidecar); codes: Q x h x w uint8 of the
    core, or None for a tile without valid pixels (nothing written, only the marker)."""
    start = time.perf_counter()
    if codes is None:
        polygons = TilePolygons.empty(tile.key, skipped=True)
    else:
        try:
            write_core(Path(outputs.store), outputs.scene_id, tile.core, codes)
        except OSError as err:  # a full or read-only disk: one line naming the mosaic, as for every output
            raise output_error(Path(outputs.store) / outputs.scene_id, err) from None
        polygons = polygonise_codes(
            codes, key=tile.key, core=tile.core, scene_shape=outputs.scene_shape, threshold=outputs.threshold
        )
    save_tile(polygons, tile_path(outputs.tiles_dir, tile))
    return FinishedTile(tile.key, len(polygons), polygons.skipped, time.perf_counter() - start)

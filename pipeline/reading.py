"""Reading a window of a scene as model input: RGB uint8 and a validity mask, boundless at the edges.

Validity comes from GDAL's mask bands (``read_masks``), which cover nodata values, internal masks and
alpha bands alike. A pixel is valid when any of its R, G, B bands is (GDAL's dataset-mask rule, so a dark
pixel with one zero channel is not nodata). Sources whose grid differs from the scene's (a coarser band
of a STAC item) are resampled bilinearly onto the scene grid through a ``WarpedVRT``.

Datasets stay open for one call or one task, no longer: no per-process cache grows with the number of scenes
(GDAL's own block and ``/vsicurl/`` caches are bounded). So that neighbouring tiles do not each decode the
blocks they share, a task reads its tiles through one :class:`SceneReader`, whose threads keep the files open
while the task runs. Those threads outlive the task (:class:`ReadingThreads`): a thread's first open costs GDAL and
PROJ their per-thread set-up while holding the GIL. A uint8 RGB source is decoded straight into the batch, and a
source whose bands GDAL flags as all valid (no nodata, mask or alpha) is not asked for a mask at all.
"""

from __future__ import annotations

import math
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from rsrs.core.errors import InputDataError
from rsrs.pipeline.geometry import PixelWindow, RasterGrid
from rsrs.pipeline.read_gate import lower_this_threads_priority
from rsrs.pipeline.scaling import apply_scaling, is_identity
from rsrs.pipeline.scenes import Scene, open_raster


class TileReadError(InputDataError):
    """A window of an opened scene cannot be read (e.g. a corrupt block); says which window and GDAL's reason."""

    def __init__(self, scene: Scene, window: PixelWindow, reason: str) -> None:
        self.window, self.reason = window, reason
        super().__init__(
            f"{scene.source}: cannot read rows {window.row_off}-{window.row_end}, "
            f"cols {window.col_off}-{window.col_end}: {reason}"
        )


def _on_grid(dataset: rasterio.DatasetReader, grid: RasterGrid) -> bool:
    return (
        dataset.shape == grid.shape
        and dataset.transform.almost_equals(grid.transform)
        and dataset.crs == CRS.from_user_input(grid.crs)
    )


def _read_bands(
    dataset: rasterio.DatasetReader,
    grid: RasterGrid,
    indexes: list[int],
    window: PixelWindow,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(values (k, h, w), valid (h, w) bool)`` of ``indexes`` inside ``window`` (within the grid), decoded into
    ``out`` when given. A pixel is valid where any of the bands is; valid is None where every pixel is (bands GDAL
    flags all valid: reading their masks would only spend time)."""
    rio_window = Window(window.col_off, window.row_off, window.width, window.height)
    if _on_grid(dataset, grid):
        values = dataset.read(indexes, window=rio_window, out=out)
        flags = [dataset.mask_flag_enums[i - 1] for i in indexes]
        if all(MaskFlags.all_valid in f for f in flags):
            return values, None
        return values, dataset.read_masks(indexes, window=rio_window).any(axis=0)
    with WarpedVRT(
        dataset,
        crs=CRS.from_user_input(grid.crs),
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=Resampling.bilinear,
        add_alpha=dataset.nodata is None,  # so pixels outside this source's footprint read as invalid
    ) as vrt:
        return vrt.read(indexes, window=rio_window, out=out), vrt.read_masks(indexes, window=rio_window).any(axis=0)


def read_tile(scene: Scene, window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
    """Read ``window`` of ``scene`` (scene pixels; may pass the edges) as model input.

    Returns ``rgb`` (3, h, w) uint8 scaled with the scene's resolved stretch and ``valid`` (h, w) bool;
    pixels outside the scene or without valid data are False in ``valid`` and 0 in ``rgb``.
    """
    rgb = np.empty((3, *window.shape), dtype=np.uint8)
    valid = np.empty(window.shape, dtype=bool)
    with _opened(scene) as datasets:
        _read_into(scene, datasets, window, rgb, valid)
    return rgb, valid


@contextmanager
def _opened(scene: Scene) -> Iterator[dict[str, rasterio.DatasetReader]]:
    """The scene's source files, open: windows read from one handle share GDAL's cache of decoded blocks."""
    with ExitStack() as stack:
        yield {href: stack.enter_context(open_raster(href)) for href in dict.fromkeys(b.href for b in scene.bands)}


def _read_into(
    scene: Scene, datasets: dict[str, rasterio.DatasetReader], window: PixelWindow, rgb: np.ndarray, valid: np.ndarray
) -> None:
    """Fill ``rgb`` (3, h, w) and ``valid`` (h, w) with :func:`read_tile`'s values for ``window``.

    A uint8 RGB source inside the scene decodes straight into ``rgb``: fresh buffers and their copies cost a
    worker about a fifth of its read time.
    """
    inner = window.intersection(scene.grid.full_window())
    if inner is None:
        rgb[:], valid[:] = 0, False
        return
    straight = inner == window and is_identity(scene.dtype, scene.scaling)
    values = rgb if straight else np.empty((3, *inner.shape), dtype=scene.dtype)  # every position is some band's
    inner_valid: np.ndarray | bool = False  # (ih, iw): valid in any band (GDAL's dataset-mask rule); True: all
    positions: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for pos, src in enumerate(scene.bands):  # href -> band index -> positions in R, G, B
        positions[src.href][src.band].append(pos)
    for href, by_band in positions.items():
        indexes = sorted(by_band)
        in_order = [by_band[band] for band in indexes] == [[0], [1], [2]]  # the file's bands are R, G, B
        try:
            data, ok = _read_bands(datasets[href], scene.grid, indexes, inner, out=values if in_order else None)
        except RasterioError as err:
            raise TileReadError(scene, inner, _gdal_reason(err)) from None
        if not in_order:
            for k, band in enumerate(indexes):
                values[by_band[band]] = data[k]
        inner_valid = True if ok is None or inner_valid is True else inner_valid | ok
    if straight and inner_valid is True:
        valid[:] = True
        return
    scaled = apply_scaling(values, scene.scaling)  # (3, ih, iw) uint8
    if inner != window:
        rgb[:], valid[:] = 0, False
    rows, cols = inner.relative_to(window).slices()
    rgb[:, rows, cols] = scaled if inner_valid is True else np.where(inner_valid, scaled, 0)
    valid[rows, cols] = inner_valid


def _gdal_reason(err: BaseException) -> str:
    """GDAL's own message: rasterio's read errors wrap it as their cause ("See previous exception")."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


class ReadingThreads:
    """Reading threads that outlive the :class:`SceneReader` that uses them: each is lent to one reader at a time.

    A thread's first raster open sets up GDAL's and PROJ's per-thread state while holding the GIL: 8-15 ms of CPU
    against about 1 ms for its second open, on this project's 2-core CPU. With threads made for each task, every
    thread of the process waited as a task's first group was read (its 8 threads opening the scene's files): in
    ``benchmarks/reader_threads.py`` (``reader_threads.json``, 3 runs), a probe thread woke over 10 ms late for 51-54%
    of the first groups' read time, against 14-18% with lent threads and 5-7% with threads warmed beforehand
    (:meth:`warm`), and the first groups took 0.19 s against 0.13 and 0.12-0.13. In a GPU worker the probe's stalls
    came only with reads, most with the tasks' first ones (65-73% of their time on an H200), and the thread that
    queues the next batch waits as the probe does. Idle threads are kept, as many as the most readers lent at once
    needed, per niceness: a thread's priority cannot be raised again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[int, list[ThreadPoolExecutor]] = defaultdict(list)  # by the niceness they were made with
        self._made = 0  # threads made, for their names

    def borrow(self, count: int, niceness: int) -> list[ThreadPoolExecutor]:
        """``count`` single-thread executors whose threads run ``niceness`` lower than the thread that first used
        them (:func:`~rsrs.pipeline.read_gate.lower_this_threads_priority`): idle ones first, else new ones."""
        with self._lock:
            idle = self._idle[niceness]
            lent = [idle.pop() for _ in range(min(count, len(idle)))]
            for _ in range(count - len(lent)):
                name = f"rsrs-read-{self._made}"
                lent.append(ThreadPoolExecutor(1, name, initializer=lower_this_threads_priority, initargs=(niceness,)))
                self._made += 1
        return lent

    def warm(self, count: int, niceness: int) -> None:
        """Have ``count`` idle threads of ``niceness``, GDAL and PROJ set up in each (a GPU worker's warm-up), so that
        the run's first tasks do not pay for it in their first reads."""
        threads = self.borrow(count, niceness)
        try:
            for done in [thread.submit(_set_up_this_thread) for thread in threads]:
                done.result()
        finally:
            self.give_back(threads, niceness)

    def give_back(self, threads: Sequence[ThreadPoolExecutor], niceness: int) -> None:
        """Keep ``threads`` (done with their reader: their files closed) for the next reader."""
        with self._lock:
            self._idle[niceness].extend(threads)

    def forget(self) -> None:
        """Drop the idle threads without stopping them: in a forked child, which has none of its parent's threads."""
        self._lock = threading.Lock()
        self._idle = defaultdict(list)


def _set_up_this_thread() -> None:
    """Write and read back a 1-pixel GeoTIFF in a projected CRS: the per-thread set-up of GDAL and PROJ (PROJ's
    database among it) that the thread's first open of a scene would otherwise pay, whatever the scene's CRS."""
    with MemoryFile() as memory:
        with memory.open(driver="GTiff", width=1, height=1, count=1, dtype="uint8", crs="EPSG:32633",
                         transform=Affine(1, 0, 500000, 0, -1, 0)) as dataset:  # fmt: skip
            dataset.write(np.zeros((1, 1, 1), np.uint8))
        with memory.open() as dataset:
            dataset.crs.to_wkt()


#: The process's reading threads, lent to each task's :class:`SceneReader`.
READING_THREADS = ReadingThreads()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=READING_THREADS.forget)


class SceneReader:
    """Reads a task's tiles of one scene, batch after batch, on ``threads`` threads.

    Each thread reads the tiles of one band of columns and keeps the scene's files open until the reader closes,
    so a tile shares decoded blocks (GDAL's block cache of that thread's handles) with its left and upper
    neighbours, across the task's batches; the bands decode in parallel. Reading each tile from fresh handles
    would decode most blocks two or three times (tiles overlap by their context, and windows rarely start on a
    block edge). ``empty(shape)`` makes each batch's uninitialised uint8 RGB array: a GPU worker passes pinned host
    memory, so tiles decode straight into what the copy to the GPU reads. ``niceness`` lowers the reading threads'
    priority (:func:`rsrs.pipeline.read_gate.lower_this_threads_priority`). The threads are lent by ``lender`` (the
    process's :data:`READING_THREADS`) and go back to it on close. Use as a context manager: the files close on exit.
    """

    def __init__(
        self,
        scene: Scene,
        *,
        threads: int = 1,
        empty: Callable[[tuple[int, ...]], np.ndarray] | None = None,
        niceness: int = 0,
        lender: ReadingThreads = READING_THREADS,
    ) -> None:
        self.scene = scene
        self._empty = empty or (lambda shape: np.empty(shape, dtype=np.uint8))
        self._lender, self._niceness = lender, niceness
        self._threads = lender.borrow(max(1, threads), niceness)
        self._open: dict[int, tuple[ExitStack, dict[str, rasterio.DatasetReader]]] = {}  # thread -> its handles

    def read(self, windows: Sequence[PixelWindow]) -> tuple[np.ndarray, np.ndarray]:
        """:func:`read_tile` of each of ``windows`` (all one shape), stacked: (B, 3, h, w) uint8, (B, h, w) bool."""
        assert len({w.shape for w in windows}) <= 1, "a batch of windows has one shape"
        h, w = windows[0].shape if windows else (0, 0)
        rgb = self._empty((len(windows), 3, h, w))
        valid = np.empty((len(windows), h, w), dtype=bool)
        band = math.ceil(self.scene.grid.width / len(self._threads))  # columns of each thread
        by_thread: dict[int, list[int]] = defaultdict(list)
        for i, window in enumerate(windows):
            centre = window.col_off + window.width // 2
            by_thread[min(len(self._threads) - 1, max(0, centre // band))].append(i)

        def read_some(k: int, indexes: list[int]) -> None:
            datasets = self._datasets(k)
            for i in indexes:
                _read_into(self.scene, datasets, windows[i], rgb[i], valid[i])

        reads = [self._threads[k].submit(read_some, k, indexes) for k, indexes in by_thread.items()]
        wait(reads)  # all, also when one fails: no thread still writes into the arrays once this returns or raises
        for done in reads:
            done.result()
        return rgb, valid

    def _datasets(self, k: int) -> dict[str, rasterio.DatasetReader]:
        """Thread ``k``'s open handles (opened on its first read, in that thread: GDAL's settings are per thread)."""
        if k not in self._open:
            stack = ExitStack()
            self._open[k] = stack, stack.enter_context(_opened(self.scene))
        return self._open[k][1]

    def close(self) -> None:
        """Close every thread's files, each in its own thread after the reads queued on it, and give the threads
        back to their lender."""
        try:
            for k, thread in enumerate(self._threads):
                thread.submit(self._close_files, k).result()
        finally:
            self._lender.give_back(self._threads, self._niceness)
            self._threads = []

    def _close_files(self, k: int) -> None:
        """In thread ``k``: close the files it opened, if any."""
        if k in self._open:
            self._open.pop(k)[0].close()

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

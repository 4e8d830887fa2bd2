"""The model a worker process keeps loaded between tasks, and its turn on the device.

Each process holds one :class:`ResidentModel`: the model, the text features of the current job's queries, its
batch predictors (CUDA graphs on a GPU, see :func:`rsrs.model.batch_predictor`) and the pool that finishes tiles
(:mod:`rsrs.pipeline.finisher`). Two tasks may share one GPU (each asks for half of it), so one reads while the
other runs the model; the model's lock keeps it to one batch at a time. On a GPU the lock is held only while a
batch's work is queued: tiles go up and codes come down on a side stream, overlapping the other task's batch.
While the GPU has no batch, the process's reads of local files take turns (:mod:`rsrs.pipeline.read_gate`): the
next batch is read soonest.

A benchmark may set a :class:`Recorder` (:func:`set_recorder`) to see the model's turns, the batches on the device,
reads and tasks on a timeline.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from rsrs.pipeline.finisher import IO_THREADS, Finisher, FinisherKind, finisher_kind
from rsrs.pipeline.mosaic import quantise
from rsrs.pipeline.read_gate import READ_NICENESS, ReadGate
from rsrs.pipeline.reading import READING_THREADS
from rsrs.pipeline.scenes import Scene, read_from_local_files

if TYPE_CHECKING:
    import torch

    from rsrs.model import PairwiseSegmenter, TextFeatures
    from rsrs.model.predictor import BatchFn


#: Tile groups a task keeps queued on the model. With two, the GPU computes one while the task hands the one before
#: it to the finisher and queues the next, so it never waits on a task's copies and hand-overs; and when another
#: task sharing the GPU ends or starts (its last writes, its first read), a batch is still queued behind this one.
GROUPS_QUEUED = 2


@dataclass(frozen=True)
class ModelRef:
    """Which model a worker loads (a preset name, model config path or checkpoint path), on which device, and how
    fast: ``compile`` compiles the image encoders and decoder, ``precision`` 'fp8' quantises their linear layers (see
    :func:`rsrs.model.acceleration.accelerate`)."""

    source: str
    device: str = "auto"
    compile: bool = False
    precision: str = "auto"


def accelerate_as_asked(model: PairwiseSegmenter, spec: ModelRef) -> None:
    """Make a worker's freshly loaded ``model`` fast as ``spec`` asks (:func:`rsrs.model.acceleration.accelerate`).

    On a GPU, fused SAM attention and patch matmuls always (rsrefseg-b 1.5x eager on an H200); on the CPU they gain
    nothing measurable, so there they come only with compile or fp8. LoRA adapters are merged into their base
    weights on any device: a worker never trains, and merged adapters cost nothing (image encoding 1.06-1.16x on a
    2-core CPU, benchmarks/results/lora_merge_cpu_*.json).
    """
    if spec.compile or spec.precision == "fp8" or model.device.type == "cuda":
        from rsrs.model.acceleration import accelerate

        accelerate(model, compile=spec.compile, fp8=spec.precision == "fp8")
    else:
        from rsrs.model.lora import merge_lora_adapters

        merge_lora_adapters(model)


class Recorder(Protocol):
    """Receives timed events of a worker: ``kind`` is 'model' (a batch's turn), 'turn_wait' (waiting for it),
    'device' (when the device computed a batch, on the host's clock), 'read', 'read_wait' (a task waiting for its
    read), 'queue' (a task queueing a group it read, the model's turn included), 'hand_over' (a group's codes handed
    to the finishers), 'task' or 'finishing' (a task's wait for its last tiles' writes)."""

    def __call__(self, kind: str, start: float, end: float, key: str) -> None: ...


class QueuedCodes:
    """A batch's codes, which on a GPU may still be on their way: :meth:`result` waits for them."""

    def __init__(
        self,
        codes: np.ndarray,
        *,
        ran: tuple[float, float] | tuple[torch.cuda.Event, torch.cuda.Event],
        clock: DeviceClock | None = None,  # reads ``ran``'s CUDA events on the host's clock, for a timeline
        copied: torch.cuda.Event | None = None,
        keep: tuple[object, ...] = (),
    ) -> None:
        self._codes = codes  # B x Q x T x T uint8, valid once ``copied`` has happened
        self._ran = ran  # when the model ran on the batch: host seconds, or CUDA events read with ``clock``
        self._clock = clock
        self._copied = copied
        self._keep = keep  # host memory the queued copies read or write, alive until they have run

    def result(self) -> tuple[np.ndarray, float]:
        """The codes (B x Q x T x T uint8) and the seconds the model ran on them, once they are on the host
        (recorded as a 'device' event, on the host's clock, when a recorder is set)."""
        if self._copied is not None:
            self._copied.synchronize()
            self._keep = ()
        first, last = self._ran
        on_host = isinstance(first, float)  # host seconds (not on a GPU), else CUDA events
        seconds = last - first if on_host else first.elapsed_time(last) / 1000
        if _RECORDER is not None and (on_host or self._clock is not None):
            start, end = (first, last) if on_host else self._clock.host_times(first, last)
            _RECORDER("device", start, end, "")
        return self._codes, seconds


class DeviceClock:
    """Reads CUDA events as host ``time.perf_counter`` seconds, from one event whose host time was taken as it
    completed (a benchmark's timeline puts the GPU's batches beside the host's reads and tasks)."""

    def __init__(self, device: torch.device) -> None:
        import torch

        self._mark = torch.cuda.Event(enable_timing=True)
        self._mark.record(torch.cuda.current_stream(device))
        self._mark.synchronize()
        self._host = time.perf_counter()

    def host_times(self, *events: torch.cuda.Event) -> tuple[float, ...]:
        """Each (completed) event's time, in host seconds."""
        return tuple(self._host + self._mark.elapsed_time(event) / 1000 for event in events)


class ResidentModel:
    """One process's loaded model, with what tasks of the current job reuse. Build with :func:`resident_model`."""

    def __init__(self, spec: ModelRef, *, finisher: FinisherKind | None = None) -> None:
        import torch

        from rsrs.model import load_model

        self.spec = spec
        self.model: PairwiseSegmenter = load_model(spec.source, device=spec.device)
        accelerate_as_asked(self.model, spec)  # before the first batch, which compiles and is captured
        kind = finisher or finisher_kind(self.model.device.type)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 1
        self.finisher = Finisher(kind, gpus=gpus, preload=("rsrs.pipeline.tasks",))  # finish_tile's module
        self._lock = threading.Lock()  # tasks sharing the process set up texts and predictors once
        self._turn = threading.Lock()  # and run the model one batch at a time
        self._queries: tuple[str, ...] | None = None
        self._text: TextFeatures | None = None
        self._predictors: dict[int, BatchFn] = {}  # by batch size, for the current queries
        self._clock: DeviceClock | None = None  # made when a timeline first needs it
        self._last_batch: torch.cuda.Event | None = None  # the end of the last batch queued on the GPU
        self._pinned_rows = 0  # the warmed-up batch size: smaller pinned batches take a block of this many rows
        self._read_gate = ReadGate(self._gpu_starved)

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self.model.device

    def text_features(self, query_texts: Sequence[str]) -> TextFeatures:
        """The queries' text features, encoded once (a new query set replaces the old one)."""
        import torch

        from rsrs.model.tokenizer import check_query_lengths

        query_texts = tuple(query_texts)
        with self._lock:
            if query_texts != self._queries:
                check_query_lengths(self.model.tokenizer, query_texts)
                with torch.no_grad():
                    self._text = self.model.encode_texts(list(query_texts))
                self._queries, self._predictors = query_texts, {}
            assert self._text is not None
            return self._text

    def predictor(self, query_texts: Sequence[str], batch: int) -> BatchFn:
        """The model's uint8 codes for these queries, for batches of at most ``batch`` tiles, made once."""
        from rsrs.model import batch_predictor

        text = self.text_features(query_texts)
        with self._lock:
            if batch not in self._predictors:
                self._predictors[batch] = batch_predictor(self.model, text, batch=batch, postprocess=stored_codes)
            return self._predictors[batch]

    def warm_up(self, query_texts: Sequence[str], *, batch: int, tile: int, tasks: int = 1) -> None:
        """On a GPU, run the job's batch shape the way ``tasks`` tasks sharing it do, so its set-up is not paid in
        tiles: graph capture, device memory, the pinned host batches the tasks hold at once (each task its queued
        groups and the one it reads), which torch's host allocator then keeps for them, and the tasks' reading
        threads (:meth:`~rsrs.pipeline.reading.ReadingThreads.warm`). Pinning the batches, or setting GDAL up in
        fresh threads, during the run's first reads delayed the GPU's first batches."""
        if self.device.type == "cuda":
            READING_THREADS.warm(tasks * IO_THREADS, self.read_niceness)
            self._pinned_rows = batch
            inputs = [self.host_batch((batch, 3, tile, tile)) for _ in range(tasks * (GROUPS_QUEUED + 1))]
            for rgb in inputs:
                rgb.fill(0)
            queued = [self.queue_codes(query_texts, batch, rgb) for rgb in inputs]  # their codes' pinned memory too
            for codes in queued:
                codes.result()

    def host_batch(self, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialised uint8 array for a batch of host tiles; on a GPU in pinned memory (torch's caching host
        allocator), which the copy up reads directly: no fresh pages to fault in, no copy into pinned memory."""
        if self.device.type != "cuda":
            return np.empty(shape, dtype=np.uint8)
        import torch

        return self._pinned(shape, torch.uint8).numpy()

    def _pinned(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Uninitialised pinned host memory for a batch, in a block of at least the warmed-up batch's rows.

        torch's host allocator reuses a free block only of the same power-of-two size, so a scene's last, smaller
        group would otherwise pin a fresh block (tens of ms, while the GPU waits) instead of reusing one the
        warm-up pinned. The first rows of a whole block start where the block does, as the copies need.
        """
        import torch

        rows = max(shape[0], self._pinned_rows)
        return torch.empty((rows, *shape[1:]), dtype=dtype, pin_memory=True)[: shape[0]]

    def queue_codes(self, query_texts: Sequence[str], batch: int, rgb: np.ndarray) -> QueuedCodes:
        """Queue host tiles on the model: their stored codes and the seconds the model ran on them come from the
        returned :class:`QueuedCodes`. On a GPU this returns once the batch's work is queued, so a task can read,
        queue and hand over its batches while the GPU computes the one before; elsewhere it computes them now.

        rgb: B x 3 x T x T uint8 -> codes B x Q x T x T uint8. Seconds: GPU time between CUDA events on a GPU.
        """
        import torch

        predict = self.predictor(query_texts, batch)
        if self.device.type == "cuda":
            return self._queue_cuda(predict, rgb)
        with self.turn():
            start = time.perf_counter()
            codes = predict(torch.from_numpy(rgb).to(self.device)).numpy()
            return QueuedCodes(codes, ran=(start, time.perf_counter()))

    def _queue_cuda(self, predict: BatchFn, rgb: np.ndarray) -> QueuedCodes:
        """:meth:`queue_codes` on a GPU, with the copies to and from it outside the model's turn.

        Tiles go up and codes come down on a side stream, through pinned memory, while other batches compute;
        the turn is held only to queue the model's work (one graph replay), so the GPU goes from one batch to the
        next without a gap. (On an H200 the turn lasted about one batch's GPU time: queueing the replay evidently
        waits while the batch ahead runs, which costs nothing while another batch is queued behind it.)
        """
        import torch

        clock = self._timeline_clock()  # made before this batch's events, which it reads
        side = torch.cuda.Stream(self.device)
        host_in = torch.from_numpy(rgb).pin_memory()  # no copy when read into :meth:`host_batch`'s memory
        with torch.cuda.stream(side):
            images = host_in.to(self.device, non_blocking=True)  # B x 3 x T x T uint8
        began, ended = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with self.turn():
            main = torch.cuda.current_stream(self.device)
            main.wait_stream(side)
            images.record_stream(main)  # allocated on ``side``, read on ``main``
            began.record(main)
            codes = predict(images)  # B x Q x T x T uint8, on the GPU
            ended.record(main)
            self._last_batch = ended
        side.wait_event(ended)
        with torch.cuda.stream(side):
            host_out = self._pinned(codes.shape, codes.dtype)
            host_out.copy_(codes, non_blocking=True)
            codes.record_stream(side)  # allocated on ``main``, read on ``side``
            copied = torch.cuda.Event()
            copied.record(side)  # after the copy up (same stream), the batch and the copy down
        return QueuedCodes(host_out.numpy(), ran=(began, ended), clock=clock, copied=copied, keep=(host_in, host_out))

    def _timeline_clock(self) -> DeviceClock | None:
        """The clock that puts GPU batches on a recorder's timeline: None without a recorder, else made once."""
        if _RECORDER is None:
            return None
        with self._lock:
            if self._clock is None:
                self._clock = DeviceClock(self.device)
            return self._clock

    def read_turn(self, scene: Scene) -> AbstractContextManager[None]:
        """A task's turn to read tiles of ``scene``: from local files, one read at a time while the GPU has no batch
        (:mod:`rsrs.pipeline.read_gate`); over a network, where reads wait on it and not on the CPU, at once."""
        return self._read_gate.turn() if read_from_local_files(scene) else nullcontext()

    @property
    def read_niceness(self) -> int:
        """How much lower its tasks' reading threads run than the thread that queues batches: on a GPU
        :data:`~rsrs.pipeline.read_gate.READ_NICENESS`, elsewhere 0 (a CPU model computes in the tasks' threads, and
        its reads should keep their share of the cores)."""
        return READ_NICENESS if self.device.type == "cuda" else 0

    def _gpu_starved(self) -> bool:
        """Whether this process's GPU has no batch queued or running (never off a GPU: reads there are not gated)."""
        last = self._last_batch
        return self.device.type == "cuda" and (last is None or last.query())

    @contextmanager
    def turn(self) -> Iterator[None]:
        """The model's turn: one batch at a time (recorded, when a recorder is set, as a 'turn_wait' event while it
        waits for the turn and a 'model' event while it holds it)."""
        with self.timed("turn_wait", ""):
            self._turn.acquire()
        try:
            with self.timed("model", ""):
                yield
        finally:
            self._turn.release()

    @contextmanager
    def timed(self, kind: str, key: str) -> Iterator[None]:
        """Record the block as an event of ``kind`` when a recorder is set."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if _RECORDER is not None:
                _RECORDER(kind, start, time.perf_counter(), key)

    def close(self) -> None:
        """Stop the finisher pool (the model goes with the object)."""
        self.finisher.shutdown()


def stored_codes(probs: torch.Tensor) -> torch.Tensor:
    """Probabilities -> the mosaic's uint8 codes, computed on the model's device (a quarter of float32's bytes)."""
    import torch

    return quantise(probs).to(torch.uint8)


_CURRENT: ResidentModel | None = None  # one model per process; replaced (not accumulated) on a new spec
_LOAD = threading.Lock()  # tasks sharing a worker load the model once
_RECORDER: Recorder | None = None  # a benchmark's timeline of this process's events


def set_recorder(recorder: Recorder | None) -> None:
    """Send this process's timed events (model turns, reads, tasks) to ``recorder`` (None: stop)."""
    global _RECORDER
    _RECORDER = recorder


def resident_model(spec: ModelRef, *, finisher: FinisherKind | None = None) -> ResidentModel:
    """This process's model for ``spec``, loaded on first use; ``finisher`` forces the pool kind of a new load."""
    global _CURRENT
    with _LOAD:
        if _CURRENT is None or _CURRENT.spec != spec:
            _drop_current()  # let the old model and pool go before loading new ones
            _CURRENT = ResidentModel(spec, finisher=finisher)
        return _CURRENT


def freeze_loaded_objects() -> None:
    """Collect now, then leave every object alive (the loaded model, its compiled code and CUDA graphs, the modules
    imported) out of Python's later cyclic collections, until the next call or until the model is dropped.

    Loading and warming up a model leaves hundreds of thousands of long-lived objects: a full collection walked them
    in 0.23-0.36 s on this project's 2-core CPU, against under a microsecond once frozen
    (``benchmarks/results/gc_pause_cpu_*.json``). It holds the GIL meanwhile, which stops a worker's reads, launches
    and event loop at once; and the objects a warm-up makes bring the next one due, as the tasks start. Reference
    counting still frees frozen objects once they are dropped; cycles among them wait for the unfreeze, which each
    call (the next job's set-up, whose queries replace the predictors) and dropping the model do.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def release_resident() -> None:
    """Drop this process's model and stop its pool (tests; a worker keeps its model for its lifetime)."""
    with _LOAD:
        _drop_current()


def _drop_current() -> None:
    """Close this process's model, if any, and let the collector see what it froze again (hold ``_LOAD``)."""
    global _CURRENT
    if _CURRENT is not None:
        _CURRENT.close()
        _CURRENT = None
        gc.unfreeze()

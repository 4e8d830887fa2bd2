"""Where a GPU worker's time goes during `rsrs run`: the model lock, tile reads and tasks, timed inside the worker.

:func:`timed_run` runs a job on the cluster `rsrs run` starts for it, whose workers get a
recorder through ``client.run`` before the job starts (``rsrs.pipeline.resident.set_recorder``: the model's turns,
the reads of tile groups and the tasks), so the run itself is `rsrs run`'s own code. :func:`summarise` reports the
scene's lead-in (first task start to the first model batch: the first read), tail (last batch to the last task's
end: copies back and writes), the time the model lock was held and the gaps between its holds. On a GPU with
side-stream copies the lock covers only queueing a batch's work, so there the gaps are not idle GPU time; the
device's own batches (CUDA events read on the host's clock) say when it computed and where it waited. The pinned
host blocks the workers allocated once the tasks began (the warm-up should have allocated them all) come with the
time spent pinning them and between which events (``pinned_when``); every event comes as one line (``events``:
reads, the queueing of what they read, waits for the model's turn (``turn_wait``), model turns, the device's
batches, each group's hand-over of its codes to the finishers, ``hand_over``, tasks and each task's final wait for
its finishers, ``finishing``; Python's full collections, ``gc``; the stack walks of Dask's statistical profiler,
``profile``). For each group it reports how long after its read ended its task resumed (``read_wait`` events end
then) and began to queue it, and how long each queueing worked before it asked for the model's turn and then
waited for it. A probe thread in the worker that sleeps :data:`PROBE_S` at a time records each wake-up more than
:data:`STALL_S` late as a ``stall``: while one lasts no thread of the worker gets the GIL (or a core) promptly, so a
task that resumes late inside one waited for the process, not for its own work.

Used by ``python -m benchmarks.run_gpu --timeline``.
"""

from __future__ import annotations

import gc
import threading
import time
from itertools import pairwise
from pathlib import Path

Event = tuple[str, int, float, float, str]  # kind, thread, start, end, first tile key

#: How long the stall probe sleeps at a time, and how late a wake-up must be to count as a stall (seconds): more
#: than Python's switch interval (5 ms), after which a thread waiting for the GIL asks its holder to drop it.
PROBE_S, STALL_S = 0.002, 0.010


class EventLog:
    """A recorder for the worker's resident model: keeps every event with the thread that saw it, and with it the
    pinned host memory allocated so far (so the run's own pinning can be told from the warm-up's)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.pinned: list[tuple[float, dict[str, float]]] = []  # (when recorded, pinned so far) at each event
        self._collecting = 0.0  # when the full collection under way began

    def __call__(self, kind: str, start: float, end: float, key: str) -> None:
        self.events.append((kind, threading.get_ident(), start, end, key))
        self.pinned.append((time.perf_counter(), _pinned_allocations()))

    def full_collections(self, phase: str, info: dict) -> None:
        """A ``gc.callbacks`` entry: each full collection as a 'gc' event (it holds the GIL: every thread of the
        worker waits for it)."""
        if info["generation"] == 2:
            if phase == "start":
                self._collecting = time.perf_counter()
            else:
                self.events.append(("gc", threading.get_ident(), self._collecting, time.perf_counter(), ""))

    def probe_stalls(self) -> None:
        """Sleep :data:`PROBE_S` at a time, forever; log each wake-up more than :data:`STALL_S` late as a 'stall'
        (from when it should have woken to when it did)."""
        while True:
            due = time.perf_counter() + PROBE_S
            time.sleep(PROBE_S)
            woke = time.perf_counter()
            if woke - due > STALL_S:
                self.events.append(("stall", threading.get_ident(), due, woke, ""))

    def time_stack_walks(self) -> None:
        """Log each stack walk of Dask's statistical profiler as a 'profile' event: every 10 ms the worker's event
        loop walks each task thread's stack while it holds the GIL (``distributed.profile.process``, which the
        worker calls without ``depth`` and which recurses with one)."""
        import distributed.profile

        walk = distributed.profile.process

        def timed_walk(*args: object, **kwargs: object) -> object:
            if "depth" in kwargs:
                return walk(*args, **kwargs)
            start = time.perf_counter()
            try:
                return walk(*args, **kwargs)
            finally:
                self.events.append(("profile", threading.get_ident(), start, time.perf_counter(), ""))

        distributed.profile.process = timed_walk


_LOG = EventLog()


def instrument() -> str:
    """In the worker: send the resident model's timed events (model turns, group reads, tasks), its full
    collections and Dask's profiler's stack walks to the log, and start the stall probe (once per worker)."""
    from rsrs.pipeline.resident import set_recorder

    set_recorder(_LOG)
    if _LOG.full_collections not in gc.callbacks:
        gc.callbacks.append(_LOG.full_collections)
        _LOG.time_stack_walks()
        threading.Thread(target=_LOG.probe_stalls, name="rsrs-stall-probe", daemon=True).start()
    return "instrumented"


def recorded() -> tuple[list[Event], list[tuple[float, dict[str, float]]]]:
    """In the worker: the events recorded so far, and the pinned host memory at each and now."""
    return list(_LOG.events), [*_LOG.pinned, (time.perf_counter(), _pinned_allocations())]


def pinned_since(snapshots: list[tuple[float, dict[str, float]]], begin: float) -> dict[str, float]:
    """Pinned host memory allocated after ``begin`` (the first task's start): from the last event recorded before
    it (the end of the model's warm-up) to the last snapshot."""
    before = [pinned for when, pinned in snapshots if when < begin]
    first, last = before[-1] if before else {}, snapshots[-1][1]
    return {k: round(v - first.get(k, 0), 4) for k, v in last.items()}


def pinned_when(snapshots: list[tuple[float, dict[str, float]]], begin: float) -> list[str]:
    """Between which two recorded events (seconds from ``begin``) blocks were pinned after ``begin``, and how long
    pinning them took: to see whether a batch's queueing waited for it."""
    grew = []
    for (was, a), (now, b) in pairwise(snapshots):
        blocks = b.get("pinned_blocks_allocated", 0) - a.get("pinned_blocks_allocated", 0)
        if now >= begin and blocks:
            seconds = b.get("pinned_alloc_s", 0) - a.get("pinned_alloc_s", 0)
            grew.append(f"{was - begin:.3f}-{now - begin:.3f} s: {blocks:g} blocks in {seconds:.3f} s")
    return grew


def _pinned_allocations() -> dict[str, float]:
    """Blocks torch's pinned host allocator has pinned, and the seconds it spent pinning them (none off a GPU)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    stats = torch.cuda.host_memory_stats()
    blocks, microseconds = stats.get("num_host_alloc", 0), stats.get("host_alloc_time.total", 0)  # torch >= 2.6
    return {"pinned_blocks_allocated": blocks, "pinned_alloc_s": microseconds / 1e6}


def summarise(events: list[Event]) -> dict:
    """Lead-in, tail, lock holds and gaps, and when the device computed and idled (seconds), over the span of the
    job's tasks (the model's warm-up excluded)."""
    tasks = sorted((e for e in events if e[0] == "task"), key=lambda e: e[2])
    begin, end = tasks[0][2], max(t[3] for t in tasks)

    def during(kind: str) -> list[Event]:
        return sorted((e for e in events if e[0] == kind and e[2] >= begin), key=lambda e: e[2])

    holds, reads, batches = during("model"), during("read"), during("device")
    queued = {e[4]: e for e in during("queue")}  # by the group's first tile, as its read
    read_to_queue = [queued[r[4]][2] - r[3] for r in reads if r[4] in queued]  # a read's end to its queueing
    resumed = {e[4]: e for e in during("read_wait")}
    read_to_resume = [resumed[r[4]][3] - r[3] for r in reads if r[4] in resumed]  # to its task's resumption
    stalls, walks, hand_overs = during("stall"), during("profile"), during("hand_over")
    turn_waits = during("turn_wait")
    before_turn = [  # each queueing's own work before it asked for the model's turn, and its wait for the turn
        (round(w[2] - q[2], 3), round(w[3] - w[2], 3))
        for q in during("queue")
        for w in turn_waits
        if w[1] == q[1] and q[2] <= w[2] <= q[3]
    ]
    gaps = [b[2] - a[3] for a, b in pairwise(holds) if b[2] > a[3]]
    idle = [(a[3], b[2]) for a, b in pairwise(batches) if b[2] > a[3]]  # the device between two batches
    return {
        "tasks": len(tasks),
        "batches": len(holds),
        "span_s": round(end - begin, 3),
        "lead_in_s": round(holds[0][2] - begin, 3),
        "tail_s": round(end - holds[-1][3], 3),
        "lock_held_s": round(sum(e[3] - e[2] for e in holds), 3),
        "gaps_between_holds_s": round(sum(gaps), 3),
        "device_busy_s": round(sum(e[3] - e[2] for e in batches), 3),
        "device_idle_before_first_batch_s": round(batches[0][2] - begin, 3),
        "device_idle_between_batches_s": round(sum(b - a for a, b in idle), 3),
        "device_idle_after_last_batch_s": round(end - batches[-1][3], 3),
        "device_longest_idle_s": _longest(idle, begin),
        "first_read_start_s": round(reads[0][2] - begin, 3),
        "first_read_s": round(reads[0][3] - reads[0][2], 3),
        "read_s_mean": round(sum(e[3] - e[2] for e in reads) / len(reads), 4),
        "read_s_max": round(max(e[3] - e[2] for e in reads), 4),
        "read_end_to_queue_s_first_8": [round(w, 3) for w in read_to_queue[:8]],
        "read_end_to_queue_s_mean": round(sum(read_to_queue) / max(1, len(read_to_queue)), 4),
        "read_end_to_resume_s_first_8": [round(w, 3) for w in read_to_resume[:8]],
        "read_end_to_resume_s_max": round(max(read_to_resume, default=0), 3),
        "queue_before_turn_and_turn_wait_s_first_8": before_turn[:8],
        "hand_over_s_mean": round(sum(e[3] - e[2] for e in hand_overs) / max(1, len(hand_overs)), 4),
        "longest_hand_overs_s": _longest(_spans(hand_overs), begin),
        "stalls": len(stalls),
        "stalled_s": round(sum(e[3] - e[2] for e in stalls), 3),
        "longest_stalls_s": _longest(_spans(stalls), begin),
        "stalled_share_of_reads": stalled_share_of_reads(stalls, reads, {t[4] for t in tasks}, (begin, end)),
        "profiler_stack_walks": len(walks),
        "profiler_stack_walks_s": round(sum(e[3] - e[2] for e in walks), 3),
        "longest_profiler_stack_walks_s": _longest(_spans(walks), begin),
        "full_collections_s": [round(e[3] - e[2], 3) for e in during("gc")],  # each stopped every thread
        "task_windows_s": [(round(t[2] - begin, 2), round(t[3] - begin, 2)) for t in tasks],
        "events": _event_lines(events, begin),
    }


def stalled_share_of_reads(
    stalls: list[Event], reads: list[Event], task_keys: set[str], span: tuple[float, float]
) -> dict[str, float]:
    """The share of the time the stall probe was late during the tasks' first reads (a task's first group has the
    task's key), during their later reads (outside first ones), and with no read running."""
    first = _union(_spans([r for r in reads if r[4] in task_keys]))
    later = _minus(_union(_spans([r for r in reads if r[4] not in task_keys])), first)
    outside = _minus([span], _union(first + later))
    stalled = _union(_spans(stalls))

    def share(spans: list[tuple[float, float]]) -> float:
        length = sum(b - a for a, b in spans)
        return round(sum(b - a for a, b in _intersect(spans, stalled)) / length, 3) if length else 0.0

    return {"first_reads": share(first), "later_reads": share(later), "outside_reads": share(outside)}


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Spans merged where they overlap, in order."""
    merged: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _intersect(xs: list[tuple[float, float]], ys: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Where two unions of spans overlap."""
    return [(max(a, c), min(b, d)) for a, b in xs for c, d in ys if max(a, c) < min(b, d)]


def _minus(xs: list[tuple[float, float]], ys: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The parts of a union of spans outside another."""
    left = []
    for a, b in xs:
        for c, d in ys:  # in order, disjoint
            if d <= a or c >= b:
                continue
            if c > a:
                left.append((a, c))
            a = max(a, d)
        if a < b:
            left.append((a, b))
    return left


def _spans(events: list[Event]) -> list[tuple[float, float]]:
    """Each event's (start, end)."""
    return [(e[2], e[3]) for e in events]


def _longest(spans: list[tuple[float, float]], begin: float, n: int = 8) -> list[tuple[float, float]]:
    """The ``n`` longest (start, end) spans as (when, from ``begin``; how long) in seconds, longest first."""
    return [(round(a - begin, 2), round(b - a, 3)) for a, b in sorted(spans, key=lambda g: g[0] - g[1])[:n]]


def _event_lines(events: list[Event], begin: float) -> list[str]:
    """Every event of the job as one line, by start: 'kind thread start-end key' (seconds from the first task's
    start, threads numbered by first appearance), to see afterwards which waits made the lead-in and the tail."""
    threads: dict[int, int] = {}
    lines = []
    for kind, thread, start, end, key in sorted((e for e in events if e[2] >= begin), key=lambda e: e[2]):
        t = threads.setdefault(thread, len(threads))
        lines.append(f"{kind} t{t} {start - begin:.3f}-{end - begin:.3f} {key}".rstrip())
    return lines


def timed_run(job: Path) -> tuple[dict, dict]:
    """Run ``job`` on the cluster `rsrs run` would start for it (:func:`rsrs.workflows.cluster.dask_client`), its
    workers instrumented first: (the run's report, :func:`summarise` of it)."""
    from rsrs.workflows import run_job
    from rsrs.workflows.cluster import dask_client
    from rsrs.workflows.job import load_job

    with dask_client(load_job(job).compute) as client:
        client.run(instrument)
        report = run_job(job, scheduler=client.scheduler.address, progress=False)
        workers = client.run(recorded).values()
    events = [e for worker_events, _ in workers for e in worker_events]
    begin = min(e[2] for e in events if e[0] == "task")
    during = [pinned_since(snapshots, begin) for _, snapshots in workers]
    pinned = {k: sum(p.get(k, 0) for p in during) for k in ("pinned_blocks_allocated", "pinned_alloc_s")}
    pinned["pinned_when"] = [line for _, snapshots in workers for line in pinned_when(snapshots, begin)]
    return report, summarise(events) | {"pinned_during_the_tasks": pinned}

"""The Dask cluster of ``rsrs run``: connect or start one, keep the model resident, bound tasks in flight.

- ``compute.scheduler`` (or ``--scheduler``) connects to an existing cluster; otherwise a ``LocalCluster``
  of ``compute.n_workers`` single-threaded worker processes starts, or with GPUs one non-daemon worker per GPU
  with a thread per task sharing it (dask-cuda's ``LocalCUDACluster`` when it is installed).
- :class:`ResidentModelPlugin` loads the model once per worker when the worker joins (tasks then find it
  in :func:`rsrs.pipeline.resident.resident_model`'s per-process cache); tasks carry only small specs.
- On GPU clusters every worker offers one ``GPU`` resource and every task asks for a share of it
  (:func:`gpu_share`): ``compute.tasks_per_gpu`` tasks share a GPU so that some read tiles while another runs the
  model (the model itself takes one batch at a time, see :mod:`rsrs.pipeline.resident`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import dask
from distributed import Client, LocalCluster, WorkerPlugin, as_completed

from rsrs.core.errors import RsrsError
from rsrs.pipeline.resident import ModelRef, freeze_loaded_objects, release_resident, resident_model
from rsrs.workflows.job import Compute

log = logging.getLogger(__name__)

#: Log level of the local cluster's own messages: its workers' shutdown chatter (after Ctrl-C, say) is not news;
#: what matters reaches the user as rsrs's own one-line errors and run.json.
QUIET = logging.ERROR
#: ... unless rsrs logs at INFO (``rsrs -v``): then its warnings show, such as a worker that died and restarts.
VERBOSE = logging.WARNING

T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K")


class ClusterError(RsrsError, ConnectionError):
    """The Dask scheduler cannot be reached, or its workers cannot run the job."""


def gpu_share(compute: Compute) -> float:
    """The share of a worker's ``GPU`` resource one task asks for (exact: tasks_per_gpu is 1, 2 or 4)."""
    return 1 / compute.tasks_per_gpu


def visible_gpus() -> int:
    """How many CUDA devices this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _local_cluster(compute: Compute) -> LocalCluster:
    """A local cluster sized from ``compute``: GPU workers when GPUs are wanted and present, else CPU. Its scheduler
    reschedules a task whose worker died at most ``compute.allowed_failures`` times."""
    with dask.config.set({"distributed.scheduler.allowed-failures": compute.allowed_failures}):
        return _start_local_cluster(compute)


def cluster_log_level() -> int:
    """The level of the local cluster's logs: :data:`QUIET`, or :data:`VERBOSE` while rsrs logs at INFO."""
    return VERBOSE if log.isEnabledFor(logging.INFO) else QUIET


def _start_local_cluster(compute: Compute) -> LocalCluster:
    level = cluster_log_level()
    gpus = visible_gpus() if compute.gpus_per_worker != 0 else 0
    if gpus:
        n_workers = min(compute.n_workers, gpus)
        threads = compute.tasks_per_gpu  # tasks sharing a GPU at once
        # non-daemon workers may start processes: the pool that writes and polygonises tiles off the model's GIL
        with dask.config.set({"distributed.worker.daemon": False}):
            if importlib.util.find_spec("dask_cuda") is not None:
                from dask_cuda import LocalCUDACluster

                log.info("starting LocalCUDACluster with %d GPU workers", n_workers)
                return LocalCUDACluster(
                    n_workers=n_workers, threads_per_worker=threads, resources={"GPU": 1}, silence_logs=level
                )
            log.info("dask-cuda not installed: LocalCluster of %d GPU workers, pinned by worker name", n_workers)
            return LocalCluster(
                n_workers=n_workers,
                threads_per_worker=threads,
                processes=True,
                resources={"GPU": 1},
                silence_logs=level,
            )
    log.info("starting LocalCluster with %d CPU workers", compute.n_workers)
    return LocalCluster(n_workers=compute.n_workers, threads_per_worker=1, processes=True, silence_logs=level)


@contextmanager
def dask_client(compute: Compute, *, scheduler: str | None = None) -> Iterator[Client]:
    """A client of the cluster the job asks for, closed (and a local cluster shut down) on exit."""
    address = scheduler or compute.scheduler
    if address:
        try:
            client = Client(address, timeout="15s")
        except (OSError, TimeoutError) as err:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {address} ({err}); check the address, or leave "
                "compute.scheduler empty to start a local cluster"
            ) from None
        with client:
            yield client
        return
    with _stop_signals_for_the_client_only(), warnings.catch_warnings():
        # another cluster holds Dask's default dashboard port: this one takes a free port, printed with the run
        warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
        cluster = _local_cluster(compute)
    scheduler_log = logging.getLogger("distributed.scheduler")  # the local scheduler runs in this process
    scheduler_log.addFilter(_killed_worker_said_by_rsrs)
    try:
        with cluster, Client(cluster) as client:
            try:
                yield client
            except KeyboardInterrupt:  # stopping busy workers is expected now: no warnings about it
                logging.getLogger("distributed").setLevel(QUIET)
                raise
    finally:
        scheduler_log.removeFilter(_killed_worker_said_by_rsrs)


def _task_error_said_by_rsrs(record: logging.LogRecord) -> bool:
    """Drop a worker's "Compute Failed" log: the task's error comes back to the client, which reports it."""
    return not str(record.msg).startswith("Compute Failed")


def _killed_worker_said_by_rsrs(record: logging.LogRecord) -> bool:
    """Drop the scheduler's error line for a task whose workers kept dying: rsrs reports it as the scene's error,
    naming the tiles."""
    return "workers died while trying to run it" not in str(record.msg)


@contextmanager
def _stop_signals_for_the_client_only() -> Iterator[None]:
    """Start local worker processes with Ctrl-C (SIGINT) and SIGTERM ignored: a terminal (or a batch system's
    cancel) signals the whole process group, and each worker would print its own traceback or die mid-chunk. The
    client alone stops the run and shuts the cluster down (Python keeps a signal ignored at start-up ignored; the
    nanny stops its worker through a queue, or with SIGKILL)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def uses_gpus(client: Client) -> bool:
    """True when the cluster's workers offer a ``GPU`` resource (tasks must then ask for one)."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return any(w.get("resources", {}).get("GPU") for w in workers)


class ResidentModelPlugin(WorkerPlugin):
    """Loads the job's model (and encodes its queries) once on every worker, as it joins the cluster.

    ``torch_threads`` sets torch's intra-op threads (Dask's nanny starts workers with OMP_NUM_THREADS=1);
    None leaves the worker's setting. On a worker seeing several GPUs, the worker's integer name picks one.
    ``warm_up=(batch, tile, tasks)``: the job's batch shape, run on a GPU as the model loads the way ``tasks`` tasks
    sharing it run it (:meth:`~rsrs.pipeline.resident.ResidentModel.warm_up`).
    ``quiet_task_errors``: drop the worker's own "Compute Failed" log of a task's exception (on the clusters rsrs
    starts, whose workers print to the user's terminal: the client reports the error as the scene's, in one line).
    """

    name = "rsrs-resident-model"

    def __init__(
        self,
        model: ModelRef,
        query_texts: tuple[str, ...],
        *,
        torch_threads: int | None,
        warm_up: tuple[int, int, int] | None = None,
        quiet_task_errors: bool = False,
    ) -> None:
        self.model = model
        self.query_texts = query_texts
        self.torch_threads = torch_threads
        self.warm_up = warm_up
        self.quiet_task_errors = quiet_task_errors

    def setup(self, worker: Any) -> None:
        import torch

        if self.quiet_task_errors:
            logging.getLogger("distributed.worker").addFilter(_task_error_said_by_rsrs)

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        if self.model.device != "cpu" and torch.cuda.device_count() > 1 and isinstance(worker.name, int):
            torch.cuda.set_device(worker.name % torch.cuda.device_count())
        resident = resident_model(self.model)
        resident.text_features(self.query_texts)
        if self.warm_up is not None:
            batch, tile, tasks = self.warm_up
            resident.warm_up(self.query_texts, batch=batch, tile=tile, tasks=tasks)
        importlib.import_module("rsrs.workflows.run_workers")  # the tasks' code (Zarr, GeoPandas), not in task one
        freeze_loaded_objects()  # no full collection walks the model's objects (and stops the worker) mid-run

    def teardown(self, worker: Any) -> None:
        """As the worker closes, stop its finisher pool: its shared-memory blocks are freed here, not left for
        Python's resource tracker to find at exit (with a warning about "leaked shared_memory objects")."""
        release_resident()


def load_models(
    client: Client,
    model: ModelRef,
    query_texts: tuple[str, ...],
    *,
    local: bool,
    warm_up: tuple[int, int, int] | None = None,
) -> None:
    """Register :class:`ResidentModelPlugin` (blocks until every current worker has loaded the model)."""
    n_workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    threads = max(1, (os.cpu_count() or 1) // n_workers) if local else None
    plugin = ResidentModelPlugin(model, query_texts, torch_threads=threads, warm_up=warm_up, quiet_task_errors=local)
    try:
        responses = client.register_plugin(plugin)
    except Exception as err:  # a worker that cannot even unpickle the plugin fails the whole registration
        check_workers_have_rsrs(client)
        raise ClusterError(f"workers could not load model {model.source!r}: {err}") from None
    errors = [r for r in (responses or {}).values() if isinstance(r, dict) and r.get("status") == "error"]
    if errors:
        raise ClusterError(f"workers could not load model {model.source!r}: {errors[0].get('exception')}")


def _rsrs_importable() -> bool:
    """Runs on a worker: unpickling this function imports rsrs, which is the test."""
    return True


def check_workers_have_rsrs(client: Client) -> None:
    """Raise :class:`ClusterError` naming the workers that cannot import rsrs (their tasks could never run)."""
    answers = client.run(_rsrs_importable, on_error="return")
    missing = sorted(address for address, answer in answers.items() if answer is not True)
    if missing:
        reason = next(str(a) for a in answers.values() if a is not True)
        raise ClusterError(
            f"worker(s) {', '.join(missing)} cannot import rsrs ({reason}); install rsrs (the version of this client) "
            "in every worker's environment, or stop those workers"
        )


def bounded_map(
    client: Client,
    func: Callable[[T], R],
    items: Iterable[tuple[K, T]],
    *,
    max_in_flight: int | Callable[[], int],
    resources: dict[str, float] | None = None,
) -> Iterator[tuple[K, R | BaseException]]:
    """Submit ``func(arg)`` for each ``(tag, arg)`` lazily, at most ``max_in_flight`` at once; yield
    ``(tag, result or error)`` as they finish. Tags stay on the client (they need not pickle).

    ``items`` is consumed only as slots free up, so a generator may skip work based on earlier results.
    ``max_in_flight`` may be a function, asked again as each task finishes (a cluster whose workers come and go).
    """
    items = iter(items)
    pending: dict[Any, K] = {}
    limit = max_in_flight if callable(max_in_flight) else lambda: max_in_flight

    def submit_next() -> bool:
        entry = next(items, None)
        if entry is None:
            return False
        tag, arg = entry
        future = client.submit(func, arg, pure=False, resources=resources)
        pending[future.key] = tag
        done.add(future)
        return True

    def fill() -> None:
        wanted = max(1, limit())
        while len(pending) < wanted and submit_next():
            pass

    done = as_completed()
    fill()
    for future in done:
        tag = pending.pop(future.key)
        try:
            outcome: R | BaseException = future.result()
        except Exception as err:  # the task's own error, or a cancellation (e.g. workers lost)
            outcome = err
        future.release()
        yield tag, outcome
        fill()

"""The cluster helpers of `rsrs run`: bounded submission and the model resident per worker."""

import logging
import multiprocessing
import subprocess
import sys

import pytest
from distributed import Client, Event, LocalCluster

from rsrs.pipeline.resident import ModelRef, resident_model
from rsrs.workflows import cluster
from rsrs.workflows.cluster import bounded_map, dask_client, gpu_share, load_models, uses_gpus
from rsrs.workflows.job import Compute

TINY = ModelRef(source="tiny", device="cpu")


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            yield client


def _square(x: int) -> int:
    return x * x


def test_bounded_map_never_has_more_than_the_limit_in_flight(client):
    consumed = []

    def items():
        for i in range(20):
            consumed.append(i)
            yield i

    seen = []
    for item, result in bounded_map(client, _square, ((i, i) for i in items()), max_in_flight=3):
        assert len(consumed) - len(seen) <= 3
        seen.append(item)
        assert result == item * item
    assert sorted(seen) == list(range(20))


def test_bounded_map_returns_task_errors_instead_of_raising(client):
    outcomes = dict(bounded_map(client, _square, [("a", "a"), (2, 2)], max_in_flight=2))
    assert isinstance(outcomes["a"], TypeError) and outcomes[2] == 4


def _model_identity(_: int) -> int:
    return id(resident_model(TINY).model)


def test_model_is_loaded_once_and_reused_by_every_task(client):
    load_models(client, TINY, ("ponds",), local=True)
    preloaded = id(resident_model(TINY).model)  # in-process workers share this process's cache
    ids = {r for _, r in bounded_map(client, _model_identity, ((i, i) for i in range(6)), max_in_flight=4)}
    assert ids == {preloaded}
    assert not uses_gpus(client)


def _finished(key: str, codes: None) -> str:
    return key


def test_a_closing_worker_stops_its_models_finisher_pool():
    """The pool's shared-memory blocks are freed as the worker closes, not found by the resource tracker at exit."""
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as local, Client(local) as client:
        load_models(client, TINY, ("ponds",), local=True)
        resident = resident_model(TINY)  # in-process workers share this process's cache
        assert resident.finisher.submit(_finished, "r0_c0", codes=None).result() == "r0_c0"
    with pytest.raises(RuntimeError, match="shutdown"):
        resident.finisher.submit(_finished, "r0_c1", codes=None)


SET_UP_A_WORKER = """
import sys
from rsrs.pipeline.resident import ModelRef
from rsrs.workflows.cluster import ResidentModelPlugin

assert "geopandas" not in sys.modules
ResidentModelPlugin(ModelRef(source="tiny", device="cpu"), ("ponds",), torch_threads=None).setup(worker=None)
print(all(m in sys.modules for m in ("rsrs.workflows.run_workers", "geopandas", "zarr")))
"""


def test_a_worker_set_up_for_a_job_has_imported_its_tasks_code_before_the_first_task():
    """The first task of a run does not wait for GeoPandas, Zarr and the task module to import."""
    out = subprocess.run([sys.executable, "-c", SET_UP_A_WORKER], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True"


SET_UP_AND_RELEASE_A_WORKER = """
import gc, weakref
from rsrs.pipeline.resident import ModelRef, release_resident, resident_model
from rsrs.workflows.cluster import ResidentModelPlugin


class Cycle:  # what a job leaves to die in a cycle, as a predictor that the next job's queries replace
    def __init__(self):
        self.me = self


spec = ModelRef(source="tiny", device="cpu")
cycle = Cycle()
died_in_a_cycle = weakref.ref(cycle)
ResidentModelPlugin(spec, ("ponds",), torch_threads=None).setup(worker=None)
model = weakref.ref(resident_model(spec).model)
frozen = gc.get_freeze_count()
del cycle
ResidentModelPlugin(spec, ("roads",), torch_threads=None).setup(worker=None)  # the next job
freed_at_the_next_set_up = died_in_a_cycle() is None
release_resident()
gc.collect()
print(frozen > 0, freed_at_the_next_set_up, gc.get_freeze_count(), model() is None)
"""


def test_a_set_up_worker_leaves_its_model_out_of_collections_and_frees_what_dies_once_set_up_again_or_released():
    """No full collection walks the loaded model mid-run; the next job's set-up and dropping the model unfreeze
    what was frozen, so cycles that died meanwhile (an old predictor, the model itself) are still freed."""
    out = subprocess.run(
        [sys.executable, "-c", SET_UP_AND_RELEASE_A_WORKER], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True True 0 True"


def _meet(mine: str, others: list[str]) -> bool:
    """Set this task's event and wait for the other tasks': returns only if all run at the same time."""
    Event(mine).set()
    return all(Event(other).wait(timeout=30) for other in others)


def _is_daemon() -> bool:
    return multiprocessing.current_process().daemon


@pytest.mark.parametrize("tasks_per_gpu", [2, 4])
def test_gpu_clusters_run_tasks_per_gpu_at_once_on_workers_that_may_start_processes(monkeypatch, tasks_per_gpu):
    monkeypatch.setattr(cluster, "visible_gpus", lambda: 1)  # the GPU branch of the local cluster, on any machine
    compute = Compute(n_workers=1, tasks_per_gpu=tasks_per_gpu)
    with dask_client(compute) as client:
        (worker,) = client.scheduler_info(n_workers=-1)["workers"].values()
        assert worker["resources"] == {"GPU": 1} and worker["nthreads"] == tasks_per_gpu and uses_gpus(client)
        gpu = {"GPU": gpu_share(compute)}
        assert client.submit(_is_daemon, resources=gpu, pure=False).result() is False  # finisher pools allowed
        names = [f"{tasks_per_gpu}-{i}" for i in range(tasks_per_gpu)]
        tasks = [client.submit(_meet, n, [o for o in names if o != n], resources=gpu, pure=False) for n in names]
        assert client.gather(tasks) == [True] * tasks_per_gpu


def _worker_address(_: int) -> str:
    from distributed import get_worker

    return get_worker().address


def test_tasks_asking_for_half_a_gpu_reach_every_gpu_worker():
    """Two workers offering one (faked) GPU each, as one host with two GPUs: GPU tasks run on both."""
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=False, resources={"GPU": 1}, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        assert uses_gpus(client)
        tagged = ((i, i) for i in range(16))
        seen = {address for _, address in bounded_map(client, _worker_address, tagged, max_in_flight=8,
                                                       resources={"GPU": gpu_share(Compute())})}  # fmt: skip
        assert seen == set(client.scheduler_info(n_workers=-1)["workers"])


def _warn_in_worker() -> None:
    logging.getLogger("distributed.worker").warning("a worker's warning")


@pytest.mark.parametrize("verbose", [False, True])
def test_the_local_clusters_warnings_show_only_under_rsrs_verbose(capfd, verbose):
    """``rsrs -v run`` shows a worker dying and restarting; a plain run keeps the cluster's chatter to itself."""
    rsrs_log = logging.getLogger("rsrs")
    level = rsrs_log.level
    rsrs_log.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        with dask_client(Compute(n_workers=1, gpus_per_worker=0)) as client:
            client.run(_warn_in_worker)
    finally:
        rsrs_log.setLevel(level)
    assert ("a worker's warning" in capfd.readouterr().err) == verbose

"""A cluster started as users start one: `dask scheduler` and `dask worker` processes from the command line, with the
`--nthreads 2 --resources GPU=1` and `DASK_DISTRIBUTED__WORKER__DAEMON=False` of the README's SLURM and Kubernetes
recipes (the model runs on the CPU here), then `rsrs run --scheduler`. Workers joining mid-run get the model and
tasks; a worker that cannot import rsrs is one line naming it, never a hang."""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from distributed import Client

from tests.servers import free_port
from tests.workflows.runs import RSRS, message_lines, start_run, tiles_done, wait_until, write_job

WORKER_ARGS = ["--nthreads", "2", "--resources", "GPU=1"]
WORKER_ENV = {"DASK_DISTRIBUTED__WORKER__DAEMON": "False"}


class CommandLineCluster:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1, stopped (their process groups) on exit."""

    def __init__(self, stack: ExitStack, logs: Path) -> None:
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.logs = logs
        logs.mkdir(exist_ok=True)
        self.procs: list[subprocess.Popen] = []
        stack.callback(self.stop)
        port = self.address.rsplit(":", 1)[1]
        self.start("scheduler", [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", port,
                                 "--dashboard-address", ":0"])  # fmt: skip
        self.client = stack.enter_context(Client(self.address, timeout="60s"))

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        env = os.environ | WORKER_ENV
        proc = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def worker(self, name: str, python: str = sys.executable) -> subprocess.Popen:
        """Start a worker as the README's recipes do; returns its process."""
        return self.start(name, [python, "-m", "dask", "worker", self.address, "--name", name, *WORKER_ARGS])

    def address_of(self, name: str, *, timeout: float = 120.0) -> str:
        """The address of the worker called ``name`` once it has joined."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for address, info in self.client.scheduler_info(n_workers=-1)["workers"].items():
                if info["name"] == name:
                    return address
            time.sleep(0.2)
        raise AssertionError(f"worker {name} did not join: {(self.logs / f'{name}.log').read_text()[-2000:]}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # a nanny whose worker failed to start ignores SIGTERM
            proc.wait()


@pytest.fixture
def cluster(tmp_path):
    with ExitStack() as stack:
        yield CommandLineCluster(stack, tmp_path / "logs")


def python_without_rsrs(folder: Path) -> str:
    """A fresh virtual environment that sees this one's packages (dask, torch, ...) but not rsrs: the site-packages
    folders are listed in a .pth file, so their own .pth files (the editable install of rsrs) are not run."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = str(folder / "bin" / "python")
    site = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    Path(site, "deps.pth").write_text("\n".join(p for p in sys.path if p.endswith("site-packages")) + "\n")
    probe = "import distributed\ntry:\n    import rsrs.workflows\nexcept ImportError:\n    print('no rsrs')"
    said = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout
    if "no rsrs" not in said:
        pytest.skip("rsrs is installed beside dask here (not editable): cannot make a worker without it")
    return python


@pytest.mark.slow
def test_a_run_on_a_command_line_cluster_completes_and_a_worker_joining_mid_run_gets_the_model_and_tasks(
    tmp_path, cluster
):
    cluster.worker("first")
    cluster.worker("second")
    cluster.address_of("first"), cluster.address_of("second")
    job = write_job(tmp_path, scenes={"a": (480, 480)}, tiling={"tile_size": 40, "overlap": 8, "batch_size": 1})
    run = start_run(job, "--scheduler", cluster.address)
    out = tmp_path / "out"
    wait_until(lambda: tiles_done(out) >= 8, run, timeout=300)
    cluster.worker("late")
    cluster.worker("late-without-rsrs", python_without_rsrs(tmp_path / "venv"))
    late = cluster.address_of("late")
    wait_until(lambda: "No module named 'rsrs'" in (tmp_path / "logs" / "late-without-rsrs.log").read_text(), run)
    _, stderr = run.communicate(timeout=900)  # a hang fails here
    assert run.returncode == 0, stderr
    report = json.loads((out / "run.json").read_text())
    assert report["totals"]["tiles_computed"] + report["totals"]["tiles_without_data"] == 400
    assert report["workers"]["tasks"].get(late, 0) > 0, report["workers"]  # the late worker ran tasks
    plugins = cluster.client.run(lambda dask_worker: sorted(dask_worker.plugins), workers=[late])[late]
    assert "rsrs-resident-model" in plugins  # ... with the model the plugin loads as a worker joins
    names = {a: info["name"] for a, info in cluster.client.scheduler_info(n_workers=-1)["workers"].items()}
    assert {names.get(a) for a in report["workers"]["tasks"]} == {"first", "second", "late"}


@pytest.mark.slow
def test_a_worker_without_rsrs_is_one_line_naming_it(tmp_path, cluster):
    cluster.worker("good")
    cluster.worker("bad", python_without_rsrs(tmp_path / "venv"))
    bad = cluster.address_of("bad")
    cluster.address_of("good")
    job = write_job(tmp_path, scenes={"a": (48, 48)})
    done = subprocess.run([*RSRS, "run", str(job), "--scheduler", cluster.address], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 1, done.stderr
    (line,) = [line for line in message_lines(done.stderr) if not line.startswith("Dask dashboard")]
    assert line.startswith(f"Error: worker(s) {bad} cannot import rsrs (") and "No module named 'rsrs'" in line, line
    assert not (tmp_path / "out" / "tiles").exists()

"""1,000 scenes from a STAC API (rustac), run end to end with the tiny model on the CPU, against 100: the client's
peak RSS and the scheduler's task count stay bounded, the progress shows scenes and tiles, run.json stays readable,
and a rerun resumes all 1,000 without computing a tile. Slow (minutes): run with `-m slow -s` to see the numbers."""

import json
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml
from distributed import Client, LocalCluster

from tests.rasters import write_geotiff
from tests.servers import rustac_api, rustac_available

SIDE = 512
#: `rsrs run ARGS` printing its peak RSS (KiB) last on stderr.
RSRS_WITH_RSS = (
    "import atexit, resource, sys\n"
    "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "atexit.register(lambda: print('peak_rss_kib', peak(), file=sys.stderr))\n"
    "from rsrs.workflows.cli import main\nsys.argv[0] = 'rsrs'\nmain()"
)


def write_catalog(folder, n: int) -> None:
    """``n`` 512 x 512 scenes side by side (smooth, so they compress to a few KB each) and their STAC items."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    features = []
    for i in range(n):
        pixels = np.stack([(xx + i) % 256, (yy + 2 * i) % 256, (xx + yy) // 4 % 256]).astype(np.uint8)
        x0, y0 = 500000.0 + (i % 40) * SIDE, 4100000.0 - (i // 40) * SIDE
        path = write_geotiff(folder / f"s{i:04d}.tif", shape=(SIDE, SIDE), res=1.0, origin=(x0, y0), data=pixels)
        features.append({
            "type": "Feature", "stac_version": "1.0.0", "id": f"s{i:04d}", "collection": "synthetic",
            "geometry": {"type": "Polygon", "coordinates": [[[-99, 37], [-98, 37], [-98, 38], [-99, 38], [-99, 37]]]},
            "bbox": [-99, 37, -98, 38], "properties": {"datetime": "2021-06-01T00:00:00Z"}, "links": [],
            "assets": {"image": {"href": str(path), "type": "image/tiff; application=geotiff"}},
        })  # fmt: skip
    (folder / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def run_and_watch(folder, api: str, scheduler: str, n: int) -> dict:
    """`rsrs run` over the first ``n`` items in its own process, sampling the scheduler's task count meanwhile."""
    job = {
        "inputs": [{"stac": {"api": api, "collections": ["synthetic"], "max_items": n}}],
        "queries": ["dark ponds", "red roofs"],
        "model": {"preset": "tiny", "device": "cpu"},
        "tiling": {"tile_size": SIDE, "overlap": 0, "batch_size": 4},
        "output": {"dir": f"out-{n}", "threshold": 0.49},
    }
    path = folder / f"job-{n}.yaml"
    path.write_text(yaml.safe_dump(job))
    tasks, stop = [0], threading.Event()

    def watch() -> None:
        with Client(scheduler, timeout="30s") as client:
            while not stop.wait(0.5):
                tasks.append(client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RSRS_WITH_RSS, "run", str(path), "--scheduler", scheduler],
                          capture_output=True, text=True, timeout=3600)  # fmt: skip
    seconds = time.perf_counter() - start
    stop.set()
    watcher.join()
    assert done.returncode == 0, done.stderr[-3000:]
    frames = done.stderr.replace("\r", "\n").splitlines()
    report_path = folder / f"out-{n}" / "run.json"
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mib": int(re.search(r"peak_rss_kib (\d+)", done.stderr).group(1)) // 1024,
        "max_scheduler_tasks": max(tasks),
        "last_progress": ([""] + [f for f in frames if f.startswith("rsrs run:")])[-1],  # none when all resume
        "run_json_bytes": report_path.stat().st_size,
        "report": json.loads(report_path.read_text()),
    }


@pytest.mark.slow
def test_a_thousand_scenes_from_a_stac_api_in_bounded_memory_and_tasks_then_a_full_resume(tmp_path):
    if not rustac_available():
        pytest.skip("rustac is not installed")
    write_catalog(tmp_path, 1000)
    with (
        rustac_api(tmp_path / "items.json") as api,
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
    ):
        runs = {n: run_and_watch(tmp_path, api, cluster.scheduler_address, n) for n in (100, 1000)}
        rerun = run_and_watch(tmp_path, api, cluster.scheduler_address, 1000)
    for n, run in runs.items():
        totals = run["report"]["totals"]
        assert totals["scenes_done"] == n and totals["tiles_computed"] == n
        assert f"{n}/{n}" in run["last_progress"] and f"scenes {n}/{n}" in run["last_progress"], run["last_progress"]
        assert run["max_scheduler_tasks"] <= 8  # (1 running + 1 waiting) per worker, and a released task or two
    assert rerun["report"]["totals"]["tiles_resumed"] == 1000 and rerun["report"]["totals"]["tiles_computed"] == 0
    ratio = runs[1000]["peak_rss_mib"] / runs[100]["peak_rss_mib"]
    summary = {n: {k: v for k, v in run.items() if k != "report"} for n, run in [*runs.items(), ("rerun", rerun)]}
    print(f"\n1,000 vs 100 scenes: {json.dumps(summary, indent=1)}\npeak RSS ratio {ratio:.3f}")
    assert ratio <= 1.3

"""Resolving a job's remote scenes (opening each COG, reading its overview statistics) one at a time and on threads.

Before the first tile, ``rsrs run`` opens every scene: for a COG behind a remote store each open waits on several
HTTP round trips. This serves synthetic uint16 COGs (the percentile stretch reads their overviews) from a local
Range server that adds a fixed delay to every request, and times ``resolve_scenes`` with 1 thread and with the
default.

Run from the repository root:  python -m benchmarks.resolve_speed [--scenes 16] [--delay 0.05]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks._common import write_result
from rsrs.workflows.inputs import RESOLVE_THREADS, resolve_scenes
from rsrs.workflows.job import parse_job
from tests.rasters import write_geotiff
from tests.servers import range_file_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds added to every HTTP request")
    parser.add_argument("--name", default="resolve_speed", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    result: dict = {"cpu_count": os.cpu_count(), "scenes": args.scenes, "delay_per_request_s": args.delay}
    runs = {"threads_1": 1, f"threads_{RESOLVE_THREADS}": RESOLVE_THREADS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.scenes * len(runs)):  # each run its own files: GDAL caches what it fetched
            write_geotiff(Path(tmp) / f"s{i:03d}.tif", shape=(1024, 1024), dtype="uint16", overviews=True, seed=i)
        with range_file_server(tmp, delay=args.delay) as url:
            for r, (name, threads) in enumerate(runs.items()):
                hrefs = [f"{url}/s{i:03d}.tif" for i in range(r * args.scenes, (r + 1) * args.scenes)]
                job = parse_job({"inputs": [{"geotiff": h} for h in hrefs], "queries": ["ponds"]})
                start = time.perf_counter()
                resolved = resolve_scenes(job, threads=threads)
                seconds = time.perf_counter() - start
                assert len(resolved.scenes) == args.scenes, resolved.failures
                result[f"{name}_ms_per_scene"] = round(seconds * 1000 / args.scenes, 1)
    result["speedup"] = round(result["threads_1_ms_per_scene"] / result[f"threads_{RESOLVE_THREADS}_ms_per_scene"], 2)
    write_result(args.name, result)


if __name__ == "__main__":
    main()

"""Peak memory of `rsrs run` (tiny model, CPU) on a small and a large synthetic scene.

The goal: memory does not grow with scene size (large within 1.3x of small), because tasks stream tiles
and return only polygons. Every process of the run is sampled (client, scheduler, nanny, workers): the
peak of their summed RSS and the peak of the largest single process are reported.

Run from the repository root:  python -m benchmarks.run_rss [--sizes 2048 16384] [--tile-size 1024]
Writes benchmarks/results/run_rss.json (and $OUT/run_rss.json when set).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import rasterio
import yaml
from affine import Affine

from benchmarks._common import write_result


def write_scene(path: Path, size: int, *, seed: int = 0, strip: int = 1024) -> None:
    """A size x size 3-band uint8 GeoTIFF (tiled, deflate), written strip by strip to bound memory.

    Strips are computed on a thread pool and compressed by GDAL's threads: a 32768² scene takes 36 s on a 2-core
    machine against 59 s single-threaded, a large part of a GPU benchmark's call. The pixels do not depend on how
    many threads made them.
    """
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32614",
        "transform": Affine(0.5, 0, 500000.0, 0, -0.5, 4100000.0),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "num_threads": "all_cpus",
    }
    rows = range(0, size, strip)
    workers = min(8, os.cpu_count() or 1)
    with rasterio.open(path, "w", **profile) as dst, ThreadPoolExecutor(workers) as pool:
        pending = {}  # at most `workers` strips ahead of the one being written, to bound memory
        for index, row in enumerate(rows):
            for ahead in rows[index : index + workers]:
                if ahead not in pending:
                    pending[ahead] = pool.submit(
                        _scene_strip, row=ahead, size=size, height=min(strip, size - ahead), seed=seed
                    )
            pixels = pending.pop(row).result()
            dst.write(pixels, window=rasterio.windows.Window(0, row, size, pixels.shape[1]))


def _scene_strip(*, row: int, size: int, height: int, seed: int) -> np.ndarray:
    """Rows ``row`` to ``row + height`` of :func:`write_scene`'s scene: 3 x height x size, uint8."""
    xx = np.arange(size, dtype=np.float32)[None, :]
    yy = np.arange(row, row + height, dtype=np.float32)[:, None]
    rng = np.random.default_rng([seed, row])
    bands = []
    for band in range(3):
        wave = np.sin(xx / (60 + 20 * band)) * np.cos(yy / (45 + 10 * band))  # height x size
        noise = rng.integers(0, 40, (height, size), dtype=np.uint8)
        bands.append((100 + 80 * wave).astype(np.uint8) + noise)
    return np.stack(bands)


def run_sampled(cmd: list[str], *, interval: float = 0.1) -> dict:
    """Run ``cmd``, sampling the RSS of it and all its descendants; peaks in MiB and wall seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak_total = peak_single = peak_client = 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            rss = []
            for p in procs:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    rss.append(0)
        except psutil.Error:
            break
        peak_total = max(peak_total, sum(rss))
        peak_single = max(peak_single, max(rss))
        peak_client = max(peak_client, rss[0])
        time.sleep(interval)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-2000:]}")
    mib = 2**20
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_all_processes_mib": round(peak_total / mib, 1),
        "peak_rss_largest_process_mib": round(peak_single / mib, 1),
        "peak_rss_client_mib": round(peak_client / mib, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 16384])
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep scenes and outputs here")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rsrs-rss-"))
    result: dict = {
        "what": "peak RSS of `rsrs run`, tiny model, CPU, LocalCluster of 1 worker",
        "device": "cpu",
        "cpu_count": psutil.cpu_count(),
        "tiling": {"tile_size": args.tile_size, "overlap": args.overlap, "batch_size": args.batch_size},
        "runs": {},
    }
    for size in args.sizes:
        folder = workdir / f"s{size}"
        folder.mkdir(parents=True, exist_ok=True)
        scene = folder / "scene.tif"
        if not scene.exists():
            t0 = time.perf_counter()
            write_scene(scene, size)
            print(f"wrote {scene} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        job = {
            "inputs": [{"geotiff": str(scene)}],
            "queries": ["dark ponds next to the road"],
            "model": {"preset": "tiny", "device": "cpu"},
            "tiling": {"tile_size": args.tile_size, "overlap": args.overlap, "batch_size": args.batch_size},
            "output": {"dir": str(folder / "out"), "threshold": 0.49},
            "compute": {"n_workers": 1},
        }
        (folder / "job.yaml").write_text(yaml.safe_dump(job))
        cmd = [sys.executable, "-c", "from rsrs.workflows.cli import main; main()", "run"]
        run = run_sampled([*cmd, str(folder / "job.yaml"), "--overwrite"])
        report = json.loads((folder / "out" / "run.json").read_text())
        run |= {"tiles": report["totals"]["tiles"], "polygons": report["totals"]["polygons"]}
        run["tiles_per_s"] = round(run["tiles"] / run["wall_s"], 2)
        result["runs"][f"{size}x{size}"] = run
        print(json.dumps({size: run}), file=sys.stderr)
    runs = list(result["runs"].values())
    if len(runs) >= 2:
        for key in ("peak_rss_all_processes_mib", "peak_rss_largest_process_mib"):
            result[f"ratio_{key.removeprefix('peak_rss_').removesuffix('_mib')}"] = round(
                runs[-1][key] / runs[0][key], 3
            )
    write_result("run_rss", result)


if __name__ == "__main__":
    main()

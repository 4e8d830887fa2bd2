"""`rsrs run` end to end on one GPU against the model alone, measured in the same run.

A synthetic multi-tile scene, a real-size preset at random init (bf16), a real LocalCluster with one GPU worker.
Reports: pipeline tiles/s (tiles computed / scene wall time, model already resident), model-only tiles/s on
in-memory tiles of the same size and batch: eager ``predict``, and the workers' own function (uint8 codes, CUDA
graphs), host to host and on the device without copies, the fastest counting), their ratio (goal >= 0.9), and the
pipeline time with 5 queries against 1, and MFU (model FLOPs per tile x tiles/s over the H200's dense bf16 peak, 790
TFLOP/s). ``--compile`` and ``--precision fp8`` set the job's ``model.compile`` / ``model.precision``; the
model-only function is accelerated as the workers accelerate theirs (``resident.accelerate_as_asked``).
``worker_model_s`` is the GPU time of the worker's model batches (CUDA events around each batch's work, copies
excluded); ``model_busy_share`` is that over the scene's wall time. The cluster is dask-cuda's LocalCUDACluster
when dask-cuda is importable, else a LocalCluster (``dask_cuda`` in the result says which).
``--tasks-per-gpu 2,4`` runs the pipeline with each ``compute.tasks_per_gpu`` (keys of the second carry a suffix).
``--timeline`` runs each job on an instrumented LocalCluster instead (:mod:`benchmarks.run_timeline`) and adds
where the worker's time went: the scene's lead-in (its first read), tail (its last copies and writes), the reads,
each task's window, and when the GPU computed batches and where it idled (its longest gaps, with when).
The model alone is measured first and the result file is written after it and after each pipeline run, with the
ratios so far, so a call stopped by its time limit keeps the runs it finished and their ratios; SIGTERM
(``timeout``) stops the run and shuts its cluster down.

Run on the GPU machine:  python -m benchmarks.run_gpu [--size 8192] [--tile-size 1024] [--batch 16]
                         [--queries 1,5] [--compile] [--precision fp8] [--tasks-per-gpu 2]
                         [--timeline] [--name run_gpu]
CPU smoke test:          python -m benchmarks.run_gpu --preset tiny --device cpu --size 2048 --queries 1 --timeline
Without Dask's statistical profiler in the workers (``dask_worker_profiler`` in the result says which ran):
                         DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False python -m benchmarks.run_gpu ...
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import logging
import tempfile
import time
from pathlib import Path
from typing import get_args

import dask
import rasterio
import torch
import yaml

from benchmarks._common import PEAK_BF16_TFLOPS, device_info, flops_per_tile, timed, write_result
from benchmarks.run_rss import write_scene
from benchmarks.run_timeline import timed_run
from rsrs.model import batch_predictor, get_model_config, load_model
from rsrs.pipeline import read_gate
from rsrs.pipeline.resident import ModelRef, accelerate_as_asked, stored_codes
from rsrs.workflows import run_job
from rsrs.workflows.interrupts import sigterm_stops
from rsrs.workflows.job import Compute

_STARTED = time.perf_counter()  # for the progress lines
QUERIES = ["the red-roofed buildings", "ponds next to the road", "the largest field", "vehicles", "tennis courts"]


def random_init_config(preset: str, folder: Path) -> Path:
    """The preset's model config with pretrained weights switched off (no hub on the GPU machine)."""
    config = get_model_config(preset).model_copy(deep=True)
    for backbone in ("siglip", "sam", "sam2"):  # the image/text model, and SAM (rsrefseg) or SAM 2 (rsrefseg2)
        if hasattr(config, backbone):
            getattr(config, backbone).pretrained = None
    config.siglip.tokenizer = "bytes"
    path = folder / f"{preset}-random.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def write_job(
    folder: Path, scene: Path, model: dict, *, queries: list[str], tile: int, batch: int, tasks_per_gpu: int = 2
) -> Path:
    """A one-scene, one-worker job over ``scene`` with outputs under ``folder``; returns the job file."""
    device = model["device"]
    name = f"q{len(queries)}-t{tasks_per_gpu}"
    job = {
        "inputs": [{"geotiff": str(scene)}],
        "queries": queries,
        "model": model,
        "tiling": {"tile_size": tile, "overlap": 64, "batch_size": batch},
        "output": {"dir": str(folder / f"out-{name}"), "threshold": 0.5},
        "compute": {"n_workers": 1, "gpus_per_worker": 1 if device == "cuda" else 0, "tasks_per_gpu": tasks_per_gpu},
    }
    path = folder / f"job-{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def run_once(
    folder: Path, scene: Path, model: dict, *, queries: list[str], tile: int, batch: int, tasks: int, timeline: bool
) -> dict:
    """One pipeline run's figures (and, with ``timeline``, where the worker's time went)."""
    path = write_job(folder, scene, model, queries=queries, tile=tile, batch=batch, tasks_per_gpu=tasks)
    t0 = time.perf_counter()
    report, summary = timed_run(path) if timeline else (run_job(path, progress=False), None)
    total = time.perf_counter() - t0
    scene_report = report["scenes"][0]
    figures = {
        "queries": len(queries),
        "tiles": scene_report["tiles_computed"],
        "scene_wall_s": round(scene_report["wall_s"], 2),
        "run_total_s_incl_cluster_and_model_load": round(total, 2),
        "start_s": report["workers"]["start_s"],  # the cluster's start, the workers' model load (compile included)
        "tiles_per_s": round(scene_report["tiles_computed"] / scene_report["wall_s"], 2),
        "worker_model_s": round(scene_report["model_s"], 2),
        "model_busy_share": round(scene_report["model_s"] / scene_report["wall_s"], 3),
        "worker_read_s": round(scene_report["read_s"], 2),
        "worker_write_s": round(scene_report["write_s"], 2),
    }
    return figures | {"timeline": summary} if summary else figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="rsrefseg-b")
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke test)")
    parser.add_argument("--queries", default="1,5", help="pipeline runs, by number of queries (1 and/or 5)")
    parser.add_argument("--compile", action="store_true", help="model.compile: compiled image encoders")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp8"], help="model.precision")
    parser.add_argument("--tasks-per-gpu", default="2", help="compute.tasks_per_gpu; several (2,4) run each")
    parser.add_argument("--timeline", action="store_true", help="record the worker's reads, model turns and tasks")
    parser.add_argument("--name", default="run_gpu", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    for handler in logging.root.handlers:
        handler.setLevel(logging.WARNING)  # warnings, such as a worker that died, not the scheduler's INFO chatter
    logging.getLogger("rsrs").setLevel(logging.INFO)  # as `rsrs -v run`: the local cluster's workers warn too
    tasks_per_gpu = [int(t) for t in args.tasks_per_gpu.split(",")]  # the first is the headline's
    allowed = get_args(Compute.model_fields["tasks_per_gpu"].annotation)  # checked now, not after the first run
    if not set(tasks_per_gpu) <= set(allowed):
        parser.error(f"--tasks-per-gpu: each of {args.tasks_per_gpu} must be one of {allowed}")
    result: dict = {
        "preset": args.preset,
        **device_info(),
        "weights": "random init, bf16",
        "scene_px": args.size,
        "tile_size": args.tile_size,
        "batch": args.batch,
        "compile": args.compile,
        "precision": args.precision,
        "tasks_per_gpu": tasks_per_gpu[0],
        "dask_cuda": importlib.util.find_spec("dask_cuda") is not None,
        "reads": f"rasterio {rasterio.__version__}, GDAL {rasterio.__gdal_version__}",  # decoding speed differs
        "read_niceness": read_gate.READ_NICENESS,  # how much lower a GPU worker's reading threads run
        "dask_worker_profiler": dask.config.get("distributed.worker.profile.enabled", True),  # distributed: on
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_config = random_init_config(args.preset, folder)
        # the model alone first: a run cut off by the device's time limit still has a ratio for each pipeline run
        result |= model_only_figures(model_config, args)
        write_result(args.name, result, echo=False)
        _progress(f"model alone: {result['model_only_tiles_per_s_1_query']} tiles/s")
        gc.collect()  # the model measured is gone: its device memory goes back for the workers
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        scene = folder / "scene.tif"
        write_scene(scene, args.size)
        _progress(f"scene of {args.size}² written")
        spec = {"config": str(model_config), "device": args.device, "compile": args.compile}
        spec |= {"precision": args.precision} if args.precision != "auto" else {}
        runs: dict[tuple[int, int], dict] = {}
        for t in tasks_per_gpu:
            for n in sorted({int(q) for q in args.queries.split(",")}):
                run = run_once(
                    folder, scene, spec, queries=QUERIES[:n], tile=args.tile_size, batch=args.batch, tasks=t,
                    timeline=args.timeline,
                )  # fmt: skip
                runs[n, t] = result[_pipeline_key(n, t, tasks_per_gpu[0])] = run
                result |= _ratios(runs, result, tasks_per_gpu)
                write_result(args.name, result, echo=False)  # kept if a later step does not finish
                _progress(f"pipeline run, {n} queries, {t} tasks: {run['tiles_per_s']} tiles/s, start {run['start_s']}")
    write_result(args.name, result)


def _progress(what: str) -> None:
    """Print ``what`` with the seconds since the script started: a call cut off by its deadline shows where the
    time went."""
    print(f"[{time.perf_counter() - _STARTED:6.1f} s] {what}", flush=True)


def model_only_figures(model_config: Path, args: argparse.Namespace) -> dict:
    """The model alone: eager float32 probabilities from host tiles, and the workers' uint8 codes (CUDA graphs on a
    GPU, the model accelerated as the workers do) from host tiles to host, and with the tiles already on the device
    and the codes left there; the ratios are taken against the fastest of the three."""
    model = load_model(model_config, device=args.device)
    flops = flops_per_tile(model, args.tile_size)  # counted eagerly, before accelerate changes the modules
    tiles = torch.randint(0, 256, (args.batch, 3, args.tile_size, args.tile_size), dtype=torch.uint8)
    texts = model.encode_texts(QUERIES[:1])
    eager = args.batch / timed(lambda: model.predict(tiles, texts).cpu(), warmup=2, iters=5)
    accelerate_as_asked(model, ModelRef(str(model_config), compile=args.compile, precision=args.precision))
    codes = batch_predictor(model, texts, batch=args.batch, postprocess=stored_codes)  # what the workers run
    same_fn = args.batch / timed(lambda: codes(tiles.to(model.device)).cpu(), warmup=2, iters=5)
    on_device = tiles.to(model.device)  # no copies: the workers overlap theirs with the model, on a side stream
    device_fn = args.batch / timed(lambda: codes(on_device), warmup=2, iters=5)
    model_only = max(eager, same_fn, device_fn)
    return {
        "model_only_eager_predict_tiles_per_s": round(eager, 2),
        "model_only_worker_codes_fn_tiles_per_s": round(same_fn, 2),
        "model_only_worker_codes_fn_on_device_tiles_per_s": round(device_fn, 2),
        "model_only_tiles_per_s_1_query": round(model_only, 2),
        "model_tflop_per_tile": round(flops / 1e12, 3),
        "mfu_model_only": round(flops * model_only / (PEAK_BF16_TFLOPS * 1e12), 3),
    }


def _ratios(runs: dict[tuple[int, int], dict], result: dict, tasks_per_gpu: list[int]) -> dict:
    """End to end against the model alone, and 5 queries' time against 1's, for the pipeline runs done so far."""
    flops = result["model_tflop_per_tile"] * 1e12
    ratios = {}
    for t in tasks_per_gpu:
        suffix = _suffix(t, tasks_per_gpu[0])
        if (1, t) in runs:
            e2e = runs[1, t]["tiles_per_s"]
            ratios[f"ratio_pipeline_vs_model_only{suffix}"] = round(e2e / result["model_only_tiles_per_s_1_query"], 3)
            ratios[f"mfu_end_to_end{suffix}"] = round(flops * e2e / (PEAK_BF16_TFLOPS * 1e12), 3)
        if {(1, t), (5, t)} <= runs.keys():
            ratios[f"ratio_time_5_queries_vs_1{suffix}"] = round(
                runs[5, t]["scene_wall_s"] / runs[1, t]["scene_wall_s"], 3
            )
    return ratios


def _pipeline_key(queries: int, tasks: int, headline_tasks: int) -> str:
    """The result's key for one pipeline run, e.g. 'pipeline_5_queries_4_tasks_per_gpu'."""
    return f"pipeline_{queries}_quer{'y' if queries == 1 else 'ies'}{_suffix(tasks, headline_tasks)}"


def _suffix(tasks: int, headline_tasks: int) -> str:
    """Keys without a suffix are the first ``--tasks-per-gpu``'s."""
    return "" if tasks == headline_tasks else f"_{tasks}_tasks_per_gpu"


if __name__ == "__main__":
    with sigterm_stops():  # `timeout` stops the run, and with it its workers (they ignore SIGTERM themselves)
        main()

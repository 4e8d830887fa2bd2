"""Shared helpers of the benchmarks: device description, CUDA-synchronised timing, a busy Python thread."""

from __future__ import annotations

import json
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

#: Dense bf16 peak of one H100/H200 SXM in TFLOP/s, the denominator of the MFU figures.
PEAK_BF16_TFLOPS = 790


def device_info() -> dict:
    """Name, memory and software of the device the benchmark runs on."""
    info = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"device": props.name, "memory_gib": round(props.total_memory / 2**30, 1)}
    else:
        info["device"] = "cpu"
    import transformers

    info["transformers"] = transformers.__version__
    return info


def timed(fn: Callable[[], object], *, warmup: int = 2, iters: int = 5) -> float:
    """Mean seconds per call of ``fn`` after ``warmup`` calls (synchronising CUDA around each timing)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def flops_per_tile(model: torch.nn.Module, tile: int) -> int:
    """FLOPs of ``predict`` on one ``tile``-pixel tile and one query (both encoders and the decoder), as counted
    by torch's FlopCounterMode (matmuls, convolutions, attention); run it on the eager model."""
    tiles = torch.randint(0, 256, (1, 3, tile, tile), dtype=torch.uint8)
    texts = model.encode_texts(["the red-roofed buildings"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.requires_grad_(False)  # the counter's module tracker fails on inputs that need grad (learned queries)
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model.predict(tiles, texts)
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)
    return counter.get_total_flops()


def write_result(name: str, result: dict, *, folder: Path | None = None, echo: bool = True) -> None:
    """Write the result to $OUT (device runs) and ``folder`` (default benchmarks/results/); print it if ``echo``."""
    text = json.dumps(result, indent=2)
    if echo:
        print(text)
    for where in filter(None, [os.environ.get("OUT"), str(folder or Path(__file__).parent / "results")]):
        Path(where).mkdir(parents=True, exist_ok=True)
        (Path(where) / f"{name}.json").write_text(text + "\n")


@contextmanager
def busy_python_thread(tile: int) -> Iterator[None]:
    """A thread doing what a worker's I/O threads do between launches: stacking, pickling, copying tiles."""
    stop = threading.Event()
    tiles = [np.random.randint(0, 255, (3, tile + 64, tile + 64), dtype=np.uint8) for _ in range(16)]

    def work() -> None:
        while not stop.is_set():
            pickle.dumps(np.stack(tiles), protocol=5)
            [t[:, :tile, :tile].copy() for t in tiles]

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()

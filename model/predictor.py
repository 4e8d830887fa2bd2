"""The batch predictor GPU workers run: ``predict`` for fixed queries, post-processed on the device (e.g. quantised
to the stored codes), replayed from CUDA graphs: one Python call per batch instead of thousands of launches.

Eager PyTorch launches every kernel of SAM and SigLIP from Python, one op at a time, and each launch needs the
GIL. Inside a Dask worker other threads (reading tiles, handing results on) hold the GIL between launches, and
the GPU waits: on an H100 such a thread slowed eager ``predict`` by about a quarter. A captured graph replays all
the kernels with one call. It needs a function without host-device synchronisation (``predict`` has none
before its result is copied back; ``tests/model/test_backbones.py`` checks that on a GPU) and fixed shapes,
so a graph is captured per input shape, with smaller batches zero-padded to the captured batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from rsrs.model.outputs import TextFeatures
    from rsrs.model.segmenter import PairwiseSegmenter

log = logging.getLogger(__name__)

BatchFn = Callable[[torch.Tensor], torch.Tensor]


def batch_predictor(
    model: PairwiseSegmenter,
    text: TextFeatures,
    *,
    batch: int,
    postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    graphs: bool = True,
) -> BatchFn:
    """``postprocess(model.predict(images, text))`` as one function of the images, for fixed queries.

    images: N x 3 x T x T uint8 on the model's device -> N x Q x T x T (``postprocess`` of the probabilities,
    computed on the device, e.g. quantised to uint8 codes so a quarter of float32's bytes cross to the host).
    On a GPU (and with ``graphs``) it is replayed from CUDA graphs captured for batches of ``batch`` tiles.
    """

    def predict(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            probs = model.predict(images, text)  # N x Q x T x T float32
            return probs if postprocess is None else postprocess(probs)

    if not graphs or model.device.type != "cuda":
        return predict
    return GraphedBatches(predict, batch=batch)


class GraphedBatches:
    """``fn`` over batches of at most ``batch`` CUDA tensors, replayed from graphs captured on first use.

    A shape whose capture fails (e.g. ``fn`` synchronises with the host) runs eagerly from then on, with a
    warning. Not thread-safe: the graphs share their input and output buffers, so callers serialise calls.
    """

    def __init__(self, fn: BatchFn, *, batch: int) -> None:
        self.fn = fn
        self.batch = batch
        self._graphs: dict[tuple, tuple[torch.Tensor, torch.cuda.CUDAGraph, torch.Tensor] | None] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """fn(x) for x: N x ... on a CUDA device (N of any size; split into batches of ``self.batch``)."""
        if len(x) > self.batch:
            return torch.cat([self(x[i : i + self.batch]) for i in range(0, len(x), self.batch)])
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        if key not in self._graphs:
            self._graphs[key] = self._capture(x)
        captured = self._graphs[key]
        if captured is None:
            return self.fn(x)
        static_in, graph, static_out = captured
        n = len(x)
        static_in[:n].copy_(x)
        static_in[n:].zero_()
        graph.replay()
        return static_out[:n].clone()  # the next replay overwrites static_out

    def _capture(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.CUDAGraph, torch.Tensor] | None:
        """Warm ``fn`` up on a side stream (as CUDA graphs require), then capture it at the padded shape."""
        static_in = torch.zeros((self.batch, *x.shape[1:]), dtype=x.dtype, device=x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.fn(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_out = self.fn(static_in)
        except RuntimeError as err:
            log.warning("CUDA graph capture failed for input %s; running eagerly (%s)", tuple(x.shape), err)
            _clear_rng_capture_state(x.device)
            return None
        finally:
            torch.cuda.empty_cache()  # give back what the eager warm-up cached; the graph has its own pool
        return static_in, graph, static_out


def _clear_rng_capture_state(device: torch.device) -> None:
    """Take the CUDA random generator out of capture mode after a failed capture.

    torch ends a capture's RNG bookkeeping only when the capture succeeds, so after a failed one every random op
    in the process raises "Offset increment outside graph capture encountered unexpectedly". A trivial capture
    runs that bookkeeping to its end.
    """
    with torch.cuda.graph(torch.cuda.CUDAGraph()):
        torch.zeros(1, device=device)

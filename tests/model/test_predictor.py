"""CUDA-graph replay of batch functions (GPU only: CUDA graphs do not exist on the CPU)."""

import logging

import pytest
import torch

from rsrs.model.predictor import GraphedBatches
from tests.model.conftest import random_tiles

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def demo_cuda():
    from rsrs.model import load_model

    return load_model("demo", device="cuda")  # trained: its masks depend on the tiles (tiny's random ones do not)


@pytest.mark.parametrize("n", [4, 3, 9])  # the captured batch, a smaller one (padded), several batches
def test_graphed_predict_equals_eager_predict(demo_cuda, n):
    text = demo_cuda.encode_texts(["the pond", "the road"])
    graphed = GraphedBatches(lambda x: demo_cuda.predict(x, text), batch=4)
    tiles = random_tiles(n, batch=n).cuda()
    expected = demo_cuda.predict(tiles, text)
    assert torch.allclose(graphed(tiles), expected, atol=2e-3)  # padded batches may pick other conv kernels
    other = random_tiles(100 + n, batch=n).cuda()  # the replay reads new inputs, not the captured ones
    expected_other = demo_cuda.predict(other, text)
    assert (expected_other - expected).abs().mean() > 0.01  # so a stale replay could not pass
    assert torch.allclose(graphed(other), expected_other, atol=2e-3)


def test_a_function_that_waits_for_the_host_runs_eagerly_with_a_warning_and_random_ops_still_work(caplog):
    def syncs(x: torch.Tensor) -> torch.Tensor:
        return x * float(x.sum().item() > 0)  # .item() copies to the host: not capturable

    graphed = GraphedBatches(syncs, batch=2)
    x = torch.arange(6.0, device="cuda").reshape(2, 3)
    with caplog.at_level(logging.WARNING, logger="rsrs.model.predictor"):
        assert torch.equal(graphed(x), x)
        assert torch.equal(graphed(x + 1), x + 1)
    assert "running eagerly" in caplog.text
    assert torch.rand(2, device="cuda").shape == (2,)  # the failed capture left the CUDA RNG usable

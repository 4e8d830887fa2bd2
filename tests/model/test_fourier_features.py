"""SAM's random-Fourier positional encodings stay float32 in bf16 models and under autocast (CPU)."""

import copy

import pytest
import torch

from rsrs.model import load_model
from rsrs.model.fourier_features import FOURIER_ENCODINGS, fourier_encoding, image_wide_fourier_encoding


def _sam(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers SAM / SAM 2 model inside an RSRefSeg / RSRefSeg 2."""
    return model.sam if hasattr(model, "sam") else model.sam2


@pytest.fixture(params=["tiny", "tiny2"])
def preset(request) -> str:
    """RSRefSeg (SAM) and RSRefSeg 2 (SAM 2)."""
    return request.param


def test_a_bf16_model_keeps_its_fourier_matrices_float32_and_the_rest_bf16(preset):
    model = load_model(preset, device="cpu", dtype="bfloat16")
    float32_model = load_model(preset, device="cpu", dtype="float32")
    matrices = [m.positional_embedding for m in model.modules() if isinstance(m, FOURIER_ENCODINGS)]
    assert matrices and all(g.dtype == torch.float32 for g in matrices)
    kept = {id(g) for g in matrices}
    others = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point() and id(t) not in kept]
    assert others and all(t.dtype == torch.bfloat16 for t in others)
    reference = [m.positional_embedding for m in float32_model.modules() if isinstance(m, FOURIER_ENCODINGS)]
    assert all(torch.equal(g, r) for g, r in zip(matrices, reference, strict=True))  # the values as loaded


def test_image_wide_encoding_of_a_bf16_model_equals_float32s_up_to_one_rounding(preset):
    float32_model = load_model(preset, device="cpu", dtype="float32")
    reference = image_wide_fourier_encoding(_sam(float32_model))  # 1 x D x Hs x Ws, values in [-1, 1]
    kept = image_wide_fourier_encoding(_sam(load_model(preset, device="cpu", dtype="bfloat16")))
    assert (kept.bfloat16().float() - reference).abs().max() <= 2**-8
    # what a plain cast gives (the matrix and the arithmetic in bf16): wrong well beyond rounding
    plain = image_wide_fourier_encoding(_sam(copy.deepcopy(float32_model).to(torch.bfloat16)))
    assert (plain.float() - reference).abs().max() > 0.05


def test_fourier_encodings_are_float32_under_bf16_autocast(preset):
    sam = _sam(load_model(preset, device="cpu", dtype="float32"))
    outside = image_wide_fourier_encoding(sam)
    grid = torch.stack(torch.meshgrid(torch.linspace(0, 1, 7), torch.linspace(0, 1, 5), indexing="ij"), dim=-1)
    outside_grid = fourier_encoding(sam.shared_image_embedding, grid)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = image_wide_fourier_encoding(sam)
        inside_grid = fourier_encoding(sam.shared_image_embedding, grid)
        autocast_matmul = (grid @ sam.shared_image_embedding.positional_embedding).dtype
    assert autocast_matmul == torch.bfloat16  # what transformers' encoding would have run in
    assert inside.dtype == inside_grid.dtype == torch.float32
    assert torch.equal(inside, outside) and torch.equal(inside_grid, outside_grid)

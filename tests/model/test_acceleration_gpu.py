"""accelerate() on CUDA: fused and compiled encoders agree with eager, flash attention runs, graphs still capture.

Run on the GPU machine (with the geospatial wheels, for the demo scene):  python -m pytest -q -m gpu
tests/model/test_acceleration_gpu.py
"""

import copy
import json
import logging
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from rsrs.model import batch_predictor, get_model_config, load_model
from rsrs.model.acceleration import accelerate, attention_kernels
from rsrs.model.fourier_features import cast_keeping_fourier_float32
from rsrs.model.fp8 import runs_float8
from rsrs.model.gelu_epilogue import has_gelu_epilogue
from tests.model.conftest import random_tiles
from tests.model.test_fused_attention import randomise_relative_positions

pytestmark = pytest.mark.gpu

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo"


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """||got - expected|| / ||expected|| in float32: one number for bf16 rounding spread over a whole tensor."""
    return float((got.float() - expected.float()).norm() / expected.float().norm())


@pytest.fixture(scope="module")
def rsrefseg_b():
    """rsrefseg-b at random init, bf16 on CUDA, with non-zero relative positions (SAM initialises them to 0)."""
    model = load_model("rsrefseg-b", device="cpu", dtype="float32", pretrained=False)
    randomise_relative_positions(model, seed=0)
    return cast_keeping_fourier_float32(model, device="cuda", dtype=torch.bfloat16)  # as load_model casts


@pytest.fixture(scope="module")
def demo_cuda():
    return load_model("demo", device="cuda")  # trained: its masks depend on the tiles (random ones barely do)


@pytest.mark.parametrize("compile", [False, True])
def test_fused_rsrefseg_b_encodes_and_decodes_like_eager_within_bf16(rsrefseg_b, compile):
    tiles = random_tiles(0, batch=2, height=1024, width=1024).cuda()
    text = rsrefseg_b.encode_texts(["the red-roofed buildings", "ponds"])
    fast = accelerate(copy.deepcopy(rsrefseg_b), compile=compile)
    assert "SamVisionSdpaAttention: fused triton" in attention_kernels(fast)  # the default on a GPU
    with torch.inference_mode():
        expected = rsrefseg_b.encode_images(tiles)
        got = fast.encode_images(tiles)
        expected_logits = rsrefseg_b.decode(expected, text).logits
        got_logits = fast.decode(got, text).logits
    assert relative_error(got.sam, expected.sam) < 2e-2
    assert relative_error(got.siglip, expected.siglip) < 2e-2
    assert relative_error(got_logits, expected_logits) < 3e-2


@pytest.mark.parametrize("compile", [False, True])
def test_triton_sam_attention_encodes_like_the_channels_kernel_within_bf16(rsrefseg_b, compile):
    tiles = random_tiles(1, batch=2, height=1024, width=1024).cuda()
    channels = accelerate(copy.deepcopy(rsrefseg_b), compile=compile)
    triton = accelerate(copy.deepcopy(rsrefseg_b), compile=compile, fused_attention="triton")
    assert "SamVisionSdpaAttention: fused triton" in attention_kernels(triton)
    with torch.inference_mode():
        expected = channels.encode_images(tiles).sam
        got = triton.encode_images(tiles).sam
    assert relative_error(got, expected) < 2e-2


def test_fused_sam_attention_runs_on_a_fused_sdpa_kernel_not_the_math_fallback(rsrefseg_b):
    fast = accelerate(copy.deepcopy(rsrefseg_b), compile=False)  # relative positions as query/key channels
    pixels = torch.rand(2, 3, 1024, 1024, device="cuda", dtype=torch.bfloat16)
    fused = [SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION]
    with torch.inference_mode(), sdpa_kernel(fused):  # raises if only the math fallback could take a layer
        tokens = fast.sam.vision_encoder(pixel_values=pixels).last_hidden_state
    assert tokens.shape == (2, 256, 64, 64) and torch.isfinite(tokens).all()


def test_patch_matmuls_embed_like_the_convolutions_within_bf16(rsrefseg_b):
    fast = accelerate(copy.deepcopy(rsrefseg_b), compile=False, fused_attention=False)
    with torch.inference_mode():
        for size, embed, reference in [
            (1024, fast.sam.vision_encoder.patch_embed, rsrefseg_b.sam.vision_encoder.patch_embed),
            (384, fast.siglip.vision_model.embeddings, rsrefseg_b.siglip.vision_model.embeddings),
        ]:
            pixels = torch.rand(2, 3, size, size, device="cuda", dtype=torch.bfloat16)
            assert relative_error(embed(pixels), reference(pixels)) < 1e-2


@pytest.mark.parametrize("compile", [False, True])
def test_gelu_epilogue_siglip_tower_encodes_like_transformers_within_bf16(rsrefseg_b, compile):
    fast = accelerate(copy.deepcopy(rsrefseg_b), compile=compile)  # epilogues by default
    mlps = [m for m in fast.siglip.vision_model.modules() if has_gelu_epilogue(m)]
    assert len(mlps) == 27  # one per encoder layer of so400m
    pixels = torch.rand(2, 3, 384, 384, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        expected = rsrefseg_b.siglip.vision_model(pixel_values=pixels).last_hidden_state
        got = fast.siglip.vision_model(pixel_values=pixels).last_hidden_state
    assert relative_error(got, expected) < 2e-2


def test_approximate_gelu_sam_encoder_encodes_like_transformers_within_bf16(rsrefseg_b):
    fast = accelerate(copy.deepcopy(rsrefseg_b), compile=False, approximate_gelu=True)
    mlps = [m for m in fast.sam.vision_encoder.modules() if has_gelu_epilogue(m)]
    assert len(mlps) == 12  # one per encoder layer of ViT-B, their LoRA adapters merged
    pixels = torch.rand(2, 3, 1024, 1024, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        expected = rsrefseg_b.sam.vision_encoder(pixel_values=pixels).last_hidden_state
        got = fast.sam.vision_encoder(pixel_values=pixels).last_hidden_state
    assert relative_error(got, expected) < 2e-2


def test_siglip_vision_tower_runs_on_flash_attention(rsrefseg_b):
    fast = accelerate(copy.deepcopy(rsrefseg_b), compile=False)
    pixels = torch.rand(2, 3, 384, 384, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # raises if flash cannot take a layer
        tokens = fast.siglip.vision_model(pixel_values=pixels).last_hidden_state
    assert tokens.shape == (2, 729, 1152)


def test_accelerated_demo_masks_equal_eager_over_the_demo_scene_through_cuda_graphs(demo_cuda, caplog):
    import rasterio  # on the GPU machine from ../shared/device/wheels.sh

    with rasterio.open(DEMO / "scene.tif") as src:
        scene = torch.from_numpy(src.read())  # 3 x 1024 x 1024 uint8
    T = 256  # the demo job's tile size
    tiles = scene.unfold(1, T, T).unfold(2, T, T).permute(1, 2, 0, 3, 4).reshape(-1, 3, T, T).cuda()  # 16 tiles
    queries = [e["text"] for e in json.loads((DEMO / "expressions.json").read_text())]
    text = demo_cuda.encode_texts(queries)
    expected = demo_cuda.predict(tiles, text) > 0.5
    fast = accelerate(copy.deepcopy(demo_cuda))
    graphed = batch_predictor(fast, text, batch=8)  # as the workers run it: replayed from CUDA graphs
    with caplog.at_level(logging.WARNING, logger="rsrs.model.predictor"):
        got = graphed(tiles) > 0.5
    assert "running eagerly" not in caplog.text  # compiled kernels were captured in the graphs
    assert expected.float().mean() > 0.01  # the demo model finds things in its scene
    assert (got == expected).float().mean() >= 0.999


def test_accelerated_predict_never_blocks_on_the_device(demo_cuda):
    fast = accelerate(copy.deepcopy(demo_cuda))
    tiles = random_tiles(0, batch=4, height=256, width=256).cuda()
    text = fast.encode_texts(["ponds"])
    fast.predict(tiles, text)  # first call: compilation, allocator and kernel set-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a blocking call now raises: it would break graph capture
    try:
        fast.predict(tiles, text)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_fp8_encoders_keep_most_demo_masks(demo_cuda):
    """Needs an H100/H200; fp8 changes the numbers a little."""
    tiles = random_tiles(1, batch=4, height=256, width=256).cuda()
    text = demo_cuda.encode_texts(["buildings", "roads", "fields"])
    expected = demo_cuda.predict(tiles, text) > 0.5
    fast = accelerate(copy.deepcopy(demo_cuda), compile=False, fp8=True)  # agreement, not speed: no compile wait
    assert any(runs_float8(m) for m in fast.sam.vision_encoder.modules())
    got = fast.predict(tiles, text) > 0.5
    assert (got == expected).float().mean() >= 0.98


def test_fp8_sam_with_window_padding_predicts_finite_probabilities():
    """SAM pads its token map to whole windows with zero rows (rsrefseg-b: 64 tokens in windows of 14), whose
    per-row float8 scale must not be 0 (it gave NaN logits)."""
    config = get_model_config("tiny").model_copy(deep=True)
    config.sam.vision["window_size"] = 6  # 16 x 16 tokens -> padded to 18 x 18
    model = load_model(config, device="cuda")
    accelerate(model, compile=False, fp8=True)
    tiles = random_tiles(1, batch=2, height=256, width=256).cuda()
    probs = model.predict(tiles, model.encode_texts(["buildings"]))  # sigmoid keeps a NaN logit NaN
    assert torch.isfinite(probs).all()

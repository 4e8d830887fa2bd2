"""Fused SAM ViT attention against transformers' own SAM attention classes (CPU, float32)."""

import copy

import pytest
import torch
from transformers.models.sam.modeling_sam import SamVisionAttention, SamVisionSdpaAttention

from rsrs.model import load_model
from rsrs.model.config import get_model_config
from rsrs.model.fused_attention import KERNELS, fuse_sam_attention, is_fused, relative_position_tables
from rsrs.model.rsrefseg.sam import sam_config

# FlexAttention outside torch.compile (the CPU reference the tests use) warns that it is unfused.
pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile.*")


def randomise_relative_positions(model: torch.nn.Module, seed: int) -> None:
    """Seeded random relative-position tables (SAM initialises them to zero, which would hide their terms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, SamVisionAttention):
                layer.rel_pos_h.copy_(torch.randn(layer.rel_pos_h.shape, generator=g))
                layer.rel_pos_w.copy_(torch.randn(layer.rel_pos_w.shape, generator=g))


def tiny_sam_attention(cls: type[SamVisionAttention], *, window_size: int) -> SamVisionAttention:
    """One attention layer of the tiny preset's SAM (window_size 0: a global layer), seeded weights."""
    config = sam_config(get_model_config("tiny").sam).vision_config
    torch.manual_seed(window_size)
    layer = cls(config, window_size).eval()
    randomise_relative_positions(layer, seed=window_size)
    return layer


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("reference", [SamVisionAttention, SamVisionSdpaAttention])
@pytest.mark.parametrize(("window_size", "shape"), [(8, (6, 8, 8)), (0, (2, 16, 16)), (0, (2, 6, 10))])
def test_fused_attention_equals_transformers_sam_attention(kernel, reference, window_size, shape):
    layer = tiny_sam_attention(reference, window_size=window_size)  # windowed (8 x 8 windows) or global
    fused = copy.deepcopy(layer)
    assert fuse_sam_attention(fused, kernel=kernel) == 1 and is_fused(fused)
    hidden = torch.randn(*shape, layer.qkv.in_features, generator=torch.Generator().manual_seed(1))
    no_positions = copy.deepcopy(layer)
    no_positions.use_rel_pos = False
    with torch.no_grad():
        expected = layer(hidden)[0]
        out, weights = fused(hidden)
        assert not torch.allclose(no_positions(hidden)[0], expected, atol=1e-3)  # the terms matter here
    assert weights is None
    torch.testing.assert_close(out, expected)


def test_fused_attention_without_relative_positions_equals_transformers():
    layer = tiny_sam_attention(SamVisionSdpaAttention, window_size=0)
    layer.use_rel_pos = False
    fused = copy.deepcopy(layer)
    fuse_sam_attention(fused, kernel="flex")
    hidden = torch.randn(2, 16, 16, layer.qkv.in_features, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(fused(hidden)[0], layer(hidden)[0])


@pytest.mark.parametrize("kernel", KERNELS)  # flex: SDPA takes a gradient on the CPU; triton: channels
def test_fused_attention_gradients_equal_transformers(kernel):
    layer = tiny_sam_attention(SamVisionSdpaAttention, window_size=8)
    fused = copy.deepcopy(layer)
    fuse_sam_attention(fused, kernel=kernel)
    hidden = torch.randn(4, 8, 8, layer.qkv.in_features, generator=torch.Generator().manual_seed(3))
    for module in (layer, fused):
        module(hidden)[0].square().sum().backward()
    for name in ("qkv.weight", "proj.weight", "rel_pos_h", "rel_pos_w"):
        expected, got = layer.get_parameter(name).grad, fused.get_parameter(name).grad
        assert expected.abs().sum() > 0
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4, msg=name)  # gradients up to 33: sum order


@pytest.mark.parametrize(  # 'triton' runs in Triton's interpreter off a GPU: slow there
    "kernel", [pytest.param(k, marks=pytest.mark.slow) if k == "triton" else k for k in KERNELS]
)
def test_fused_tiny_sam_vision_encoder_equals_unfused(kernel):
    model = load_model("tiny", device="cpu")  # SAM's windowed and global layers, LoRA on qkv and proj
    randomise_relative_positions(model, seed=4)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.sam.vision_encoder.named_parameters():
            if "lora_B" in name:  # zero at init: make the adapters count
                param.copy_(0.1 * torch.randn(param.shape, generator=g))
    encoder = model.sam.vision_encoder
    fused = copy.deepcopy(encoder)
    assert fuse_sam_attention(fused, kernel=kernel) == 2
    pixels = torch.rand(2, 3, model.sam_image_size, model.sam_image_size, generator=g)
    with torch.no_grad():
        expected = encoder(pixels).last_hidden_state
        got = fused(pixels).last_hidden_state
    assert fused.state_dict().keys() == encoder.state_dict().keys()
    torch.testing.assert_close(got, expected)


def test_relative_position_tables_padded_to_whole_multiples_keep_their_terms_and_add_zero_keys():
    layer = tiny_sam_attention(SamVisionAttention, window_size=0)
    heads = layer.num_attention_heads
    query = torch.randn(
        2, heads, 6 * 10, layer.qkv.out_features // 3 // heads, generator=torch.Generator().manual_seed(6)
    )
    rel_h, rel_w = relative_position_tables(layer, query, height=6, width=10)
    padded_h, padded_w = relative_position_tables(layer, query, height=6, width=10, keys_multiple=8)
    assert (rel_h.shape[-1], rel_w.shape[-1], padded_h.shape[-1], padded_w.shape[-1]) == (6, 10, 8, 16)
    torch.testing.assert_close(padded_h[..., :6], rel_h)
    torch.testing.assert_close(padded_w[..., :10], rel_w)
    assert not padded_h[..., 6:].any() and not padded_w[..., 10:].any()


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="kernel must be one of"):
        fuse_sam_attention(torch.nn.Linear(2, 2), kernel="xformers")

"""Float8 linear layers (rsrs.model.fp8) on the CPU: row-wise scaling, which layers take it, and that an encoder
computes what it did within float8's error. Speed and the demo's mask agreement are measured on an H100/H200
(tests/model/test_acceleration_gpu.py, benchmarks/encoder_fusion.py --fp8)."""

import copy
import re

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers.models.sam2.modeling_sam2 import Sam2FeedForward

from rsrs.model import fp8, load_model
from rsrs.model.acceleration import accelerate, image_encoders
from rsrs.model.fp8 import FLOAT8_MAX, float8_linears, rowwise_float8, runs_float8
from tests.model.test_lora import tiny_with_trained_adapters

#: e4m3 keeps 3 mantissa bits: a value rounds to within 2^-4 of itself, relative (below the subnormal range, to
#: within 2^-9 of its row's scale).
E4M3_ROUNDING = 2**-4


def test_rowwise_float8_keeps_each_row_within_e4m3_rounding_and_a_zero_row_at_zero():
    magnitudes = torch.tensor([1e-3, 1.0, 1e3, 0.0])[:, None]  # rows of very different sizes, one all zero
    rows = torch.randn(4, 64, generator=torch.Generator().manual_seed(0)) * magnitudes
    quantised, scale = rowwise_float8(rows)
    assert quantised.dtype == torch.float8_e4m3fn and scale.shape == (4, 1)
    restored = quantised.float() * scale
    assert torch.isfinite(restored).all() and (restored[3] == 0).all()
    bound = E4M3_ROUNDING * rows.abs() + 2**-9 * scale
    assert ((restored - rows).abs() <= bound).all()
    assert (quantised[:3].float().abs().amax(dim=1) == FLOAT8_MAX).all()  # each row's largest value fills the range


#: The second layer of each MLP class in the tiny model's encoders, which GELU's output feeds.
SECOND_MLP_LAYER = re.compile(r"\.mlp\.(lin2|fc2)(\.|$)")


def test_float8_goes_to_aligned_linear_layers_but_lora_adapters_and_mlp_second_layers_and_keeps_the_state_dict(tiny):
    model = copy.deepcopy(tiny)
    encoders = image_encoders(model)
    converted = sum(float8_linears(encoder) for encoder in encoders.values())
    layers = {
        f"{e}.{n}": m for e, enc in encoders.items() for n, m in enc.named_modules() if type(m) is torch.nn.Linear
    }
    float8 = {name for name, layer in layers.items() if runs_float8(layer)}
    aligned = {n for n, layer in layers.items() if layer.in_features % 16 == 0 and layer.out_features % 16 == 0}
    assert converted == len(float8) > 0
    second = {name for name in aligned if SECOND_MLP_LAYER.search(name)}
    assert second and float8 == {name for name in aligned - second if "lora_" not in name}
    assert any(name.endswith(".base_layer") for name in float8)  # LoRA'd layers compute their base in float8
    assert any(name.endswith("mlp.fc1") for name in float8)  # no epilogue on these fc1s: they go float8
    assert model.state_dict().keys() == tiny.state_dict().keys()


def test_float8_takes_sam2_hiera_mlps_first_layer_and_leaves_their_second_in_bf16():
    model = load_model("tiny2", device="cpu")
    float8_linears(model.sam2.vision_encoder)
    mlps = [m for m in model.sam2.vision_encoder.modules() if isinstance(m, Sam2FeedForward)]
    assert mlps and all(runs_float8(m.proj_in) and not runs_float8(m.proj_out) for m in mlps)


def test_a_float8_siglip_tower_encodes_like_its_own_weights_within_float8_error(tiny):
    model = copy.deepcopy(tiny)
    assert float8_linears(model.siglip.vision_model) > 0
    pixels = torch.rand(2, 3, 384, 384, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = tiny.siglip.vision_model(pixel_values=pixels).last_hidden_state
        got = model.siglip.vision_model(pixel_values=pixels).last_hidden_state
    error = float((got - expected).norm() / expected.norm())
    assert 1e-4 < error < 0.1  # float8 really ran, and only rounded


def test_accelerate_makes_the_float8_weights_of_lora_layers_from_their_merged_weights(monkeypatch):
    monkeypatch.setattr(fp8, "check_fp8_support", lambda device, dtype: None)  # float8 layers run on the CPU too
    model = tiny_with_trained_adapters()
    adapted = {name: m for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
    unmerged = {name: m.get_base_layer().weight.clone() for name, m in adapted.items()}
    accelerate(model, compile=False, fp8=True)
    float8 = {name: m.get_base_layer() for name, m in adapted.items() if runs_float8(m.get_base_layer())}
    assert float8 and all(adapted[name].merged for name in float8)
    for name, layer in float8.items():
        assert not torch.equal(layer.weight, unmerged[name])  # the adapter is in the base weight now
        restored = layer.weight_float8.float() * layer.weight_scale.t()  # out x in
        bound = E4M3_ROUNDING * layer.weight.abs() + 2**-9 * layer.weight_scale.t()
        assert ((restored - layer.weight).abs() <= bound).all()  # and the float8 copy is of the merged weight


@pytest.mark.slow  # inductor compiles a C++ kernel for the CPU: about 10 s
def test_a_compiled_float8_mlp_computes_its_eager_output():
    """The workers compile their float8 encoders (``model.compile: true``); torchao's tensor subclass never
    compiled rsrefseg-b in time, so this checks the plain ATen path goes through inductor."""
    mlp = torch.nn.Sequential(
        torch.nn.LayerNorm(64), torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64)
    )
    assert float8_linears(mlp) == 2
    x = torch.randn(4, 10, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():  # as the workers run it: _scaled_mm has no gradient
        expected = mlp(x)
        got = torch.compile(mlp, dynamic=False)(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)

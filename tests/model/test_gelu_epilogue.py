"""SigLIP's MLPs with the GELU epilogue: which layers take it, and that off a GPU they compute transformers' forward.

Its CUDA path (one cuBLASLt call) is checked against transformers' MLP in tests/model/test_acceleration_gpu.py.
"""

import copy

import torch
from transformers.models.siglip.modeling_siglip import SiglipMLP
from transformers.models.siglip2.modeling_siglip2 import Siglip2MLP

from rsrs.model import fp8, load_model
from rsrs.model.acceleration import accelerate
from rsrs.model.gelu_epilogue import fuse_gelu_epilogues, has_gelu_epilogue
from tests.model.conftest import random_tiles


def siglip_mlps(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, (SiglipMLP, Siglip2MLP))}


def test_gelu_epilogues_go_to_every_siglip_mlp_whose_fc1_is_a_plain_linear_layer():
    model = load_model("tiny2", device="cpu")  # RSRefSeg 2: LoRA on its SigLIP head's MLP
    mlps = siglip_mlps(model)
    assert fuse_gelu_epilogues(model) == len(mlps) - 1
    assert [name for name, mlp in mlps.items() if not has_gelu_epilogue(mlp)] == ["siglip.vision_model.head.mlp"]


def test_an_mlp_with_another_activation_is_left_alone(tiny):
    mlp = copy.deepcopy(next(iter(siglip_mlps(tiny).values())))  # its own copy of the config too
    mlp.config.hidden_act = "gelu"  # exact GELU: not what the epilogue computes
    assert fuse_gelu_epilogues(mlp) == 0 and not has_gelu_epilogue(mlp)


def test_accelerate_gives_epilogues_by_default_and_off_a_gpu_they_compute_transformers_forward(tiny):
    options = {"compile": False, "fused_attention": False, "patch_matmuls": False}  # SDPA attention in both
    model = accelerate(copy.deepcopy(tiny), **options, gelu_epilogues=False)
    fast = accelerate(copy.deepcopy(tiny), **options)
    assert not any(has_gelu_epilogue(mlp) for mlp in siglip_mlps(model).values())
    assert all(has_gelu_epilogue(mlp) for mlp in siglip_mlps(fast).values())
    assert fast.state_dict().keys() == model.state_dict().keys()
    tiles = random_tiles(0)
    with torch.inference_mode():
        expected = model.predict(tiles, model.encode_texts(["a pond"]))
        got = fast.predict(tiles, fast.encode_texts(["a pond"]))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_fp8_encoders_keep_transformers_mlp_forward(tiny, monkeypatch):
    """fc1's float8 matmul, which ``_addmm_activation`` would bypass."""
    monkeypatch.setattr(fp8, "check_fp8_support", lambda device, dtype: None)  # float8 layers run on the CPU too
    model = accelerate(copy.deepcopy(tiny), compile=False, fp8=True)
    assert all(fp8.runs_float8(mlp.fc1) for mlp in siglip_mlps(model.siglip.vision_model).values())
    assert not any(has_gelu_epilogue(mlp) for mlp in siglip_mlps(model).values())

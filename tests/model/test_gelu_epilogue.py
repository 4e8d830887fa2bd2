"""MLPs with the GELU epilogue: which take it (SigLIP's; SAM's only approximated), and that off a GPU they compute
transformers' forward.

Its CUDA path (one cuBLASLt call) is checked against transformers' MLP in tests/model/test_acceleration_gpu.py.
"""

import copy

import torch
from transformers.activations import ACT2FN
from transformers.models.sam.modeling_sam import SamMLPBlock
from transformers.models.sam2.modeling_sam2 import Sam2FeedForward
from transformers.models.siglip.modeling_siglip import SiglipMLP
from transformers.models.siglip2.modeling_siglip2 import Siglip2MLP

from rsrs.model import fp8, load_model
from rsrs.model.acceleration import accelerate
from rsrs.model.gelu_epilogue import fuse_gelu_epilogues, has_gelu_epilogue
from rsrs.model.lora import merge_lora_adapters
from tests.model.conftest import random_tiles
from tests.model.test_lora import tiny_with_trained_adapters


def siglip_mlps(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, (SiglipMLP, Siglip2MLP))}


def test_gelu_epilogues_go_to_every_siglip_mlp_whose_fc1_is_a_plain_linear_layer():
    model = load_model("tiny2", device="cpu")  # RSRefSeg 2: LoRA on its SigLIP head's MLP
    mlps = siglip_mlps(model)
    assert fuse_gelu_epilogues(model) == len(mlps) - 1
    assert [name for name, mlp in mlps.items() if not has_gelu_epilogue(mlp)] == ["siglip.vision_model.head.mlp"]


def test_an_mlp_with_the_exact_gelu_takes_the_epilogue_only_when_approximating_is_allowed(tiny):
    mlp = copy.deepcopy(next(iter(siglip_mlps(tiny).values())))
    mlp.activation_fn = ACT2FN["gelu"]  # exact GELU: not what the epilogue computes
    assert fuse_gelu_epilogues(mlp) == 0 and not has_gelu_epilogue(mlp)
    assert fuse_gelu_epilogues(mlp, approximate=True) == 1 and has_gelu_epilogue(mlp)


def test_sam_mlps_take_the_epilogue_when_approximating_once_their_lora_adapters_are_merged():
    model = tiny_with_trained_adapters()  # LoRA on every SAM lin1
    sam_mlps = [m for m in model.sam.vision_encoder.modules() if isinstance(m, SamMLPBlock)]
    assert fuse_gelu_epilogues(model.sam, approximate=True) == 0  # an adapter running beside lin1: left alone
    merge_lora_adapters(model)
    assert fuse_gelu_epilogues(model.sam, approximate=True) == len(sam_mlps) > 0
    assert all(has_gelu_epilogue(m) for m in sam_mlps)


def test_sam2_hiera_mlps_take_the_approximated_epilogue_and_off_a_gpu_still_compute_the_exact_gelu():
    model = load_model("tiny2", device="cpu")
    merge_lora_adapters(model)
    fast = copy.deepcopy(model)
    fuse_gelu_epilogues(fast, approximate=True)
    hiera = [m for m in fast.sam2.vision_encoder.modules() if isinstance(m, Sam2FeedForward)]
    decoder = [m for m in fast.sam2.mask_decoder.modules() if isinstance(m, Sam2FeedForward)]
    assert hiera and all(has_gelu_epilogue(m) for m in hiera)
    assert decoder and not any(has_gelu_epilogue(m) for m in decoder)  # ReLU, some of three layers
    tiles = random_tiles(0)
    with torch.inference_mode():
        expected = model.predict(tiles, model.encode_texts(["a pond"]))
        got = fast.predict(tiles, fast.encode_texts(["a pond"]))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


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


def test_with_fp8_siglip_mlps_keep_their_epilogues_and_sam_mlps_their_float8_first_layer(tiny, monkeypatch):
    """fc1's matmul is the epilogue's: a float8 copy of it would never run."""
    monkeypatch.setattr(fp8, "check_fp8_support", lambda device, dtype: None)  # float8 layers run on the CPU too
    model = accelerate(copy.deepcopy(tiny), compile=False, fp8=True)
    assert all(has_gelu_epilogue(mlp) for mlp in siglip_mlps(model).values())
    assert not any(fp8.runs_float8(mlp.fc1) for mlp in siglip_mlps(model).values())
    sam_mlps = [m for m in model.sam.vision_encoder.modules() if isinstance(m, SamMLPBlock)]
    assert sam_mlps and not any(has_gelu_epilogue(m) for m in sam_mlps)
    assert all(fp8.runs_float8(m.lin1.get_base_layer()) for m in sam_mlps)

"""accelerate(): image encoders and attention layers found by type, SDPA switch, compile cache, FP8 guard (CPU)."""

import copy
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import Sam2HieraDetConfig, Sam2VisionConfig, Siglip2VisionConfig, SiglipVisionConfig
from transformers.models.sam2.modeling_sam2 import Sam2VisionModel
from transformers.models.siglip.modeling_siglip import SiglipAttention, SiglipVisionModel
from transformers.models.siglip2.modeling_siglip2 import Siglip2VisionModel

from rsrs.core.errors import ConfigError, RsrsError
from rsrs.model import load_model
from rsrs.model.acceleration import (
    accelerate,
    attention_kernels,
    compile_cache_dir,
    compile_decode_pairs,
    image_encoders,
    is_decoder_compiled,
    use_compile_cache,
    use_sdpa_attention,
)
from rsrs.model.patch_embedding import is_patch_matmul
from tests.model.conftest import random_tiles
from tests.model.test_fused_attention import randomise_relative_positions


def tiny_with_relative_positions():
    """A fresh tiny model (accelerate changes it in place) whose SAM relative positions are not zero."""
    model = load_model("tiny", device="cpu")
    randomise_relative_positions(model, seed=0)
    return model


def tiny_hiera() -> tuple[Sam2VisionModel, dict]:
    """SAM 2's image encoder (Hiera + FPN neck) at toy size with eager attention, and its inputs."""
    backbone = Sam2HieraDetConfig(
        hidden_size=16,
        image_size=[64, 64],
        blocks_per_stage=[1, 2, 2, 1],
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 2, 2, 4],
        window_size_per_stage=[4, 2, 2, 1],
        global_attention_blocks=[2],
        window_positional_embedding_background_size=[2, 2],
    )
    config = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[128, 64, 32, 16],
        backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]],
        fpn_hidden_size=32,
    )
    return Sam2VisionModel._from_config(config, attn_implementation="eager"), {"pixel_values": torch.rand(2, 3, 64, 64)}


def tiny_siglip() -> tuple[SiglipVisionModel, dict]:
    config = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14
    )
    return SiglipVisionModel._from_config(config, attn_implementation="eager"), {
        "pixel_values": torch.rand(2, 3, 56, 56)
    }


def tiny_siglip2() -> tuple[Siglip2VisionModel, dict]:
    """SigLIP2's NaFlex vision tower: patches in, with their grid and (here: no) padding mask."""
    config = Siglip2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=4, num_patches=16
    )
    inputs = {
        "pixel_values": torch.rand(2, 16, 3 * 4 * 4),
        "pixel_attention_mask": None,
        "spatial_shapes": torch.tensor([[4, 4], [4, 4]]),
    }
    return Siglip2VisionModel._from_config(config, attn_implementation="eager"), inputs


@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile.*")
def test_accelerate_without_compile_leaves_predict_equal():
    model = tiny_with_relative_positions()
    reference = copy.deepcopy(model)
    tiles = random_tiles(0)
    text = model.encode_texts(["the pond", "the road"])
    assert accelerate(model, compile=False, fused_attention=True) is model
    assert model.state_dict().keys() == reference.state_dict().keys()
    torch.testing.assert_close(model.predict(tiles, text), reference.predict(tiles, text))


def test_accelerate_puts_sam_on_the_fused_channels_kernel_off_a_gpu_and_the_rest_on_sdpa_unless_told_otherwise():
    model = accelerate(load_model("tiny", device="cpu"), compile=False)
    assert attention_kernels(model) == {"SiglipAttention: sdpa": 4, "SamVisionSdpaAttention: fused channels": 2}
    model = accelerate(load_model("tiny", device="cpu"), compile=False, fused_attention="flex")
    assert attention_kernels(model) == {"SiglipAttention: sdpa": 4, "SamVisionSdpaAttention: fused flex": 2}
    model = accelerate(load_model("tiny", device="cpu"), compile=False, fused_attention=False)
    assert attention_kernels(model) == {"SiglipAttention: sdpa": 4, "SamVisionSdpaAttention: sdpa": 2}


@pytest.mark.parametrize("patch_matmuls", [True, False])
def test_accelerate_computes_the_encoders_patch_embeddings_as_matmuls_unless_told_not_to(patch_matmuls):
    model = accelerate(load_model("tiny", device="cpu"), compile=False, patch_matmuls=patch_matmuls)
    patch_embeddings = [
        model.sam.vision_encoder.patch_embed.projection,
        model.siglip.vision_model.embeddings.patch_embedding,
    ]
    assert [is_patch_matmul(conv) for conv in patch_embeddings] == [patch_matmuls] * 2
    others = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m not in patch_embeddings]
    assert len(others) > 10 and not any(is_patch_matmul(m) for m in others)  # SAM's neck, the prompter's, ...


def test_compile_covers_the_decoder_of_a_segmenter_unless_told_not_to():
    """Compiling is lazy (the first call compiles), so this checks only what is set up."""
    assert is_decoder_compiled(accelerate(load_model("tiny", device="cpu")))
    assert not is_decoder_compiled(accelerate(load_model("tiny", device="cpu"), compile_decoder=False))
    assert not is_decoder_compiled(accelerate(load_model("tiny", device="cpu"), compile=False))
    compiled = accelerate(load_model("tiny2", device="cpu"))
    assert is_decoder_compiled(compiled) and not compile_decode_pairs(compiled)  # once only
    siglip, _ = tiny_siglip()
    assert not compile_decode_pairs(siglip) and accelerate(siglip) is siglip  # an encoder alone has no decoder


@pytest.mark.slow  # compiling a tiny decoder on a 2-core CPU takes about a minute
@pytest.mark.parametrize("preset", ["tiny", "tiny2"])
def test_compiled_decode_pairs_equals_eager_for_both_architectures(preset, monkeypatch, tmp_path):
    monkeypatch.setenv("RSRS_COMPILE_CACHE", str(tmp_path / "cache"))
    model = load_model(preset, device="cpu")
    if preset == "tiny":
        randomise_relative_positions(model, seed=0)
    features = model.encode_images(random_tiles(3))
    text = model.encode_texts(["the pond", "the road"])
    pairs = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    with torch.inference_mode():
        expected = model.decode_pairs(features, text, *pairs)
        assert compile_decode_pairs(model)
        compiled = model.decode_pairs(features, text, *pairs)
    for got, want in zip(compiled, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_image_encoders_are_found_by_type_outermost_first():
    tiny = load_model("tiny", device="cpu")
    assert set(image_encoders(tiny)) == {"sam.vision_encoder", "siglip.vision_model"}
    hiera, _ = tiny_hiera()
    siglip2, _ = tiny_siglip2()
    other = nn.ModuleDict({"sam2": nn.ModuleDict({"vision_encoder": hiera}), "siglip2": siglip2})
    assert set(image_encoders(other)) == {"sam2.vision_encoder", "siglip2"}  # not Hiera inside SAM 2's encoder
    assert image_encoders(hiera.backbone) == {"": hiera.backbone}


@pytest.mark.parametrize("build", [tiny_siglip, tiny_siglip2, tiny_hiera])
def test_eager_attention_switches_to_sdpa_with_equal_outputs(build):
    torch.manual_seed(0)
    model, inputs = build()
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).last_hidden_state
        assert use_sdpa_attention(model) >= 2
        assert all(kernel.endswith(": sdpa") for kernel in attention_kernels(model))
        torch.testing.assert_close(model(**inputs).last_hidden_state, expected)
    assert use_sdpa_attention(model) == 0  # already switched


def test_siglip_vision_attention_gets_no_mask(tiny):
    """No mask lets SDPA pick flash attention in bf16 (the GPU test checks that flash runs)."""
    masks = []

    def record(module, args, kwargs):
        masks.append(kwargs.get("attention_mask", args[1] if len(args) > 1 else None))

    layers = [m for m in tiny.siglip.vision_model.modules() if isinstance(m, SiglipAttention)]
    hooks = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    try:
        with torch.no_grad():
            tiny.encode_images(random_tiles(1))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(masks) == len(layers) == 2 and all(mask is None for mask in masks)


def test_compile_modes_with_their_own_cuda_graphs_are_refused():
    model = load_model("tiny", device="cpu")
    with pytest.raises(ValueError, match="rsrs captures its own CUDA graphs"):
        accelerate(model, mode="reduce-overhead")
    assert attention_kernels(model) == {"SiglipAttention: sdpa": 4, "SamVisionSdpaAttention: sdpa": 2}  # unchanged


def test_compile_cache_is_rsrs_compile_cache_else_under_home(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # restored after the test
    monkeypatch.delenv("RSRS_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache_dir() == tmp_path / "home" / ".cache" / "rsrs" / "inductor"
    monkeypatch.setenv("RSRS_COMPILE_CACHE", str(tmp_path / "cache"))
    assert use_compile_cache() == tmp_path / "cache"
    assert (tmp_path / "cache").is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")


def test_fp8_on_the_cpu_is_refused_in_one_line_before_anything_changes():
    model = load_model("tiny", device="cpu")
    with pytest.raises(ConfigError, match="fp8 needs an NVIDIA GPU of compute capability >= 9.0") as err:
        accelerate(model, compile=False, fp8=True)
    assert isinstance(err.value, RsrsError) and "\n" not in str(err.value) and "on cpu" in str(err.value)
    assert "SamVisionSdpaAttention: sdpa" in attention_kernels(model)  # not fused: refused first


@pytest.mark.slow  # compiling both tiny encoders on a 2-core CPU takes about 3 minutes (30 s from a warm cache)
def test_compiled_accelerate_predicts_like_eager_and_fills_the_compile_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("RSRS_COMPILE_CACHE", str(tmp_path / "cache"))
    model = tiny_with_relative_positions()
    reference = copy.deepcopy(model)
    tiles = random_tiles(2)
    text = model.encode_texts(["the pond"])
    accelerate(model)  # the encoders and the decoder
    torch.testing.assert_close(model.predict(tiles, text), reference.predict(tiles, text), atol=1e-5, rtol=1e-4)
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert any(Path(tmp_path / "cache").rglob("*"))

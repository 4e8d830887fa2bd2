"""Meta SAM 2 checkpoints -> transformers Sam2Model, checked against Meta's naming as ``meta_sam2.py`` states it."""

import pytest
import torch
from transformers import Sam2Model

from rsrs.core.errors import CheckpointError
from rsrs.model import get_model_config
from rsrs.model.rsrefseg2.backbones import build_sam2
from rsrs.model.rsrefseg2.sam2_convert import POS, apply_meta_sam2, hf_to_meta, meta_to_hf
from tests.model.rsrefseg2.meta_sam2 import HIERA, TOY, TOY_HEAD, VIDEO_ONLY, hf_config, meta_sam2_layout, to_meta


def _toy_model(seed: int) -> Sam2Model:
    torch.manual_seed(seed)
    model = Sam2Model(hf_config(TOY, **TOY_HEAD))
    state = model.state_dict()
    with torch.no_grad():  # every tensor random, so a wrong pairing cannot pass by zeros or ones
        for tensor in state.values():
            tensor.normal_()
        # transformers holds the Fourier matrix twice; a loaded SAM 2 has one value in both
        state["prompt_encoder.shared_embedding.positional_embedding"].copy_(state[POS])
    return model


def _toy_layout() -> dict[str, tuple]:
    return meta_sam2_layout(TOY, hidden=TOY_HEAD["hidden"], mlp=TOY_HEAD["mlp"], iou_hidden=TOY_HEAD["iou_hidden"])


@pytest.mark.parametrize("size", sorted(HIERA))
def test_every_meta_key_maps_and_shapes_agree_at_real_size(size):
    layout = meta_sam2_layout(HIERA[size]) | VIDEO_ONLY
    meta = {k: torch.empty(shape, device="meta") for k, shape in layout.items()}
    with torch.device("meta"):
        hf = Sam2Model(hf_config(HIERA[size])).state_dict()
    converted = meta_to_hf(meta)
    assert converted.keys() == hf.keys()
    for key, tensor in converted.items():
        assert tensor.shape == hf[key].shape, key


def test_independent_renaming_agrees_with_the_stated_layout():
    """The test's own transformers -> Meta renaming lands on exactly the keys and shapes of Meta's layout."""
    meta = to_meta(_toy_model(0).state_dict())
    assert {k: tuple(v.shape) for k, v in meta.items()} == _toy_layout()


def test_meta_file_loads_every_tensor_into_sam2(tmp_path):
    source = _toy_model(1)
    meta = to_meta(source.state_dict()) | {k: torch.randn(s) for k, s in VIDEO_ONLY.items()}
    path = tmp_path / "sam2.1_hiera_toy.pt"
    torch.save({"model": meta}, path)
    target = _toy_model(2)
    apply_meta_sam2(target, path)
    expected, loaded = source.state_dict(), target.state_dict()
    assert loaded.keys() == expected.keys()
    for key in expected:
        assert torch.equal(loaded[key], expected[key]), key


def test_round_trip_is_exact_both_ways():
    hf = _toy_model(3).state_dict()
    back = meta_to_hf(hf_to_meta(hf))
    assert back.keys() == hf.keys()
    assert all(torch.equal(back[k], hf[k]) for k in hf)
    meta = to_meta(hf)
    again = hf_to_meta(meta_to_hf(meta))
    assert again.keys() == meta.keys()
    assert all(torch.equal(again[k], meta[k]) for k in meta)


def test_a_file_of_another_size_is_refused_with_one_line(tmp_path):
    path = tmp_path / "sam2.1_hiera_wider.pt"
    wider = meta_sam2_layout((16, *TOY[1:]), hidden=TOY_HEAD["hidden"], mlp=TOY_HEAD["mlp"], iou_hidden=24)
    torch.save({"model": {k: torch.zeros(s) for k, s in wider.items()}}, path)
    with pytest.raises(CheckpointError, match="does not fit the model") as err:
        apply_meta_sam2(_toy_model(0), path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"model": {"image_encoder.blocks.0.attn.qkv.weight": torch.zeros(3, 1)}}, "unexpected key"),  # SAM 1
        (b"II*\x00junk", "not a readable PyTorch checkpoint"),  # a TIFF header
        ({"model": {"x": "not a tensor"}}, "not a named tensor"),
    ],
)
def test_files_that_are_not_sam2_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        apply_meta_sam2(_toy_model(0), path)


def test_sam2_pretrained_may_be_meta_file(tmp_path):
    """``sam2.pretrained: /path/sam2.1_hiera_*.pt`` in a model config loads Meta's file as the SAM 2 base."""
    spec = get_model_config("tiny2").sam2
    backbone = spec.vision["backbone_config"]
    hiera = (
        backbone["hidden_size"],
        backbone["num_attention_heads_per_stage"][0],
        tuple(backbone["blocks_per_stage"]),
        tuple(backbone["global_attention_blocks"]),
        tuple(backbone["window_positional_embedding_background_size"]),
        tuple(backbone["window_size_per_stage"]),
    )
    decoder = spec.mask_decoder
    layout = meta_sam2_layout(
        hiera, hidden=decoder["hidden_size"], mlp=decoder["mlp_dim"], iou_hidden=decoder["iou_head_hidden_dim"]
    )
    g = torch.Generator().manual_seed(5)
    meta = {k: torch.randn(shape, generator=g) for k, shape in layout.items()}
    path = tmp_path / "sam2.1_hiera_tiny2.pt"
    torch.save({"model": meta}, path)
    sam2 = build_sam2(spec.model_copy(update={"pretrained": str(path)}), pretrained=True, weights_root=None)
    loaded = to_meta(sam2.state_dict())
    assert loaded.keys() == meta.keys()
    assert all(torch.equal(loaded[k], meta[k]) for k in meta)

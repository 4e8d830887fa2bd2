import pytest
import torch
from transformers import SamModel, SiglipModel

from rsrs.core.errors import WeightsNotFoundError
from rsrs.model import build_model, get_model_config, load_model


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("RSRS_WEIGHTS_DIR", str(tmp_path / "weights"))
    return tmp_path


def test_missing_pretrained_weights_give_one_clear_line(offline_empty_cache):
    with pytest.raises(WeightsNotFoundError) as info:
        load_model("rsrefseg-b", device="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert "google/siglip-so400m-patch14-384" in message
    assert "hf download google/siglip-so400m-patch14-384" in message
    assert str(offline_empty_cache / "weights") in message
    assert isinstance(info.value, FileNotFoundError)


def test_pretrained_backbones_load_from_a_local_weights_dir(offline_empty_cache):
    """The real loading path (from_pretrained on local directories) with tiny-sized backbones."""
    tiny = build_model(get_model_config("tiny"), pretrained=False)
    root = offline_empty_cache / "weights"
    siglip_src = SiglipModel._from_config(tiny.siglip.config)
    sam_src = SamModel._from_config(tiny.sam.config)
    siglip_src.save_pretrained(root / "org" / "siglip-tiny")
    sam_src.save_pretrained(root / "org" / "sam-tiny")

    config = get_model_config("tiny").model_copy(deep=True)
    config.siglip.pretrained = "org/siglip-tiny"
    config.sam.pretrained = "org/sam-tiny"
    model = load_model(config, device="cpu")

    torch.testing.assert_close(
        model.sam.mask_decoder.iou_token.weight, sam_src.mask_decoder.iou_token.weight, rtol=0, atol=0
    )
    qkv = model.sam.vision_encoder.layers[0].attn.qkv.base_layer.weight
    assert torch.equal(qkv, sam_src.vision_encoder.layers[0].attn.qkv.weight)
    q = model.siglip.text_model.encoder.layers[0].self_attn.q_proj.base_layer.weight
    assert torch.equal(q, siglip_src.text_model.encoder.layers[0].self_attn.q_proj.weight)

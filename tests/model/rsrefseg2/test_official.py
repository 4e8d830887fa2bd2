"""The authors' released RSRefSeg 2 checkpoints: the name table against the official layout (``official_layout.py``,
written from the official code), loading full and "slight" files, the exact round trip, and files that are not
RSRefSeg 2 checkpoints."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rsrs.core.errors import CheckpointError, ConfigError
from rsrs.model import get_model_config, load_model
from rsrs.model.rsrefseg2 import official
from rsrs.model.rsrefseg2.official import (
    UNUSED,
    is_official_checkpoint,
    is_trained,
    load_official_checkpoint,
    official_names,
    official_state_dict,
)
from rsrs.model.rsrefseg2.sam2_convert import POS, TIED_POS
from rsrs.model.spec import resolve_model_spec
from tests.model.rsrefseg2.meta_sam2 import TOY, meta_sam2_layout
from tests.model.rsrefseg2.official_layout import official_layout


def _tiny2(seed: int):
    config = get_model_config("tiny2").model_copy(update={"init_seed": seed})
    return load_model(config, device="cpu")


def _random(layout: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in layout.items()}


def _save(tmp_path, state, name="rrsisd.pth", **extra):
    path = tmp_path / name
    torch.save({"state_dict": state, **extra}, path)
    return path


@pytest.fixture(scope="module")
def official_tiny2():
    """A full official-layout state dict for tiny2 with random values (BatchNorm's step counter an integer)."""
    state = _random(official_layout(get_model_config("tiny2")), seed=7)
    state["prompter.dense_prompt_conv.1.num_batches_tracked"] = torch.tensor(123)
    return state


@pytest.mark.parametrize("preset", ["rsrefseg2-l", "tiny2"])
def test_name_table_covers_the_official_layout_with_the_same_shapes(preset):
    layout = official_layout(get_model_config(preset))
    ours = load_model(preset, device="meta").state_dict()
    table = official_names(ours)
    assert table.keys() == ours.keys()
    for key, names in table.items():
        if len(names) > 1:  # rows stacked along dim 0
            assert len(names) == ours[key].shape[0], key
            assert all(layout[n] == (1, *ours[key].shape[1:]) for n in names), key
        else:
            assert layout[names[0]] == tuple(ours[key].shape), key
    claimed = {n for names in table.values() for n in names}
    assert set(layout) - claimed == set(UNUSED)
    assert claimed <= set(layout)


def test_full_file_sets_every_tensor(tmp_path, official_tiny2):
    path = _save(tmp_path, official_tiny2)
    model = _tiny2(seed=1)
    report = load_official_checkpoint(model, path)
    ours = model.state_dict()
    assert report.from_base == []
    assert sorted(report.unused) == sorted(UNUSED)
    assert sorted(report.from_file) == sorted(ours)
    for key, names in official_names(ours).items():
        expected = torch.cat([official_tiny2[n] for n in names]) if len(names) > 1 else official_tiny2[names[0]]
        assert torch.equal(ours[key], expected.to(ours[key].dtype)), key


def test_full_file_places_tensors_as_the_official_names_say(tmp_path, official_tiny2):
    """Spot checks written out by hand: LoRA in the wrapped image encoder, the neck conv, MLP renumbering, the
    stacked point embeddings, attention out_proj, SigLIP under its peft wrappers, the prompter."""
    model = _tiny2(seed=1)
    load_official_checkpoint(model, _save(tmp_path, official_tiny2))
    ours = model.state_dict()
    o, b, n = official_tiny2, "sam2.vision_encoder.backbone.", "sam2.vision_encoder.neck."
    enc, dec = "backbone.model.image_encoder.base_model.model.", "backbone.model.sam_mask_decoder."
    vision, text = "clip_vision_encoder.base_model.model.model.", "clip_text_encoder.base_model.model."
    pairs = {
        b + "blocks.1.attn.qkv.lora_A.default.weight": enc + "trunk.blocks.1.attn.qkv.lora_A.default.weight",
        b + "blocks.1.attn.qkv.base_layer.weight": enc + "trunk.blocks.1.attn.qkv.base_layer.weight",
        b + "blocks.1.proj.weight": enc + "trunk.blocks.1.proj.weight",
        b + "blocks.0.mlp.proj_out.weight": enc + "trunk.blocks.0.mlp.layers.1.weight",
        b + "pos_embed_window": enc + "trunk.pos_embed_window",
        n + "convs.2.lora_B.default.weight": enc + "neck.convs.2.conv.lora_B.default.weight",
        "sam2.mask_decoder.iou_prediction_head.layers.0.weight": dec + "iou_prediction_head.layers.1.weight",
        "sam2.mask_decoder.transformer.layers.1.cross_attn_image_to_token.o_proj.bias": dec
        + "transformer.layers.1.cross_attn_image_to_token.out_proj.bias",
        "sam2.no_memory_embedding": "backbone.model.no_mem_embed",
        "siglip.vision_model.head.mlp.fc2.lora_A.default.weight": vision + "head.mlp.fc2.lora_A.default.weight",
        "siglip.text_model.head.base_layer.bias": text + "model.head.base_layer.bias",
        "siglip.logit_bias": text + "logit_bias",
        "prompter.dense_prompt_conv.1.running_var": "prompter.dense_prompt_conv.1.running_var",
        "decode_head.logit_scale2": "decode_head.logit_scale2",
    }
    for our, theirs in pairs.items():
        assert torch.equal(ours[our], o[theirs]), our
    for i in range(4):
        assert torch.equal(
            ours["sam2.prompt_encoder.point_embed.weight"][i],
            o[f"backbone.model.sam_prompt_encoder.point_embeddings.{i}.weight"][0],
        )
    gaussian = o["backbone.model.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    assert torch.equal(ours["sam2." + POS], gaussian) and torch.equal(ours["sam2." + TIED_POS], gaussian)


def test_round_trip_ours_official_ours_is_exact(tmp_path):
    source = _tiny2(seed=3)
    state = source.state_dict()
    with torch.no_grad():  # one Fourier matrix in both copies, as in any SAM 2 loaded from weights
        state["sam2." + TIED_POS].copy_(state["sam2." + POS])
    target = _tiny2(seed=4)
    load_official_checkpoint(target, _save(tmp_path, official_state_dict(source)))
    loaded = target.state_dict()
    assert loaded.keys() == state.keys()
    for key in state:
        assert torch.equal(loaded[key], state[key]), key


def test_slight_file_takes_the_frozen_rest_from_the_base(tmp_path):
    trained = _tiny2(seed=0)
    state = trained.state_dict()
    with torch.no_grad():  # training changed what is_trained names
        for key, names in official_names(state).items():
            if is_trained(names[0]):
                state[key].add_(1)
    slight = official_state_dict(trained, trained_only=True)
    assert not any(k.endswith("base_layer.weight") for k in slight)
    fresh = _tiny2(seed=0)  # the same base backbones
    report = load_official_checkpoint(fresh, _save(tmp_path, slight, name="slight.pth"))
    expected, loaded = trained.state_dict(), fresh.state_dict()
    for key in expected:
        assert torch.equal(loaded[key], expected[key]), key
    assert "sam2.vision_encoder.backbone.blocks.0.attn.qkv.base_layer.weight" in report.from_base
    assert "sam2.vision_encoder.backbone.blocks.0.attn.qkv.lora_A.default.weight" in report.from_file
    assert "prompter.dense_prompt_conv.1.running_mean" in report.from_file
    assert set(report.from_file) | set(report.from_base) == set(expected)


def test_training_objects_and_bf16_weights_load(tmp_path, official_tiny2):
    """As DeepSpeed bf16 training saves them, with mmengine's meta beside the weights: cast to the model's dtype."""
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in official_tiny2.items()}
    meta = {"epoch": 110, "seed": np.int64(0), "dataset_meta": {"classes": ("background", "object")}}
    model = _tiny2(seed=1)
    load_official_checkpoint(model, _save(tmp_path, state, meta=meta))
    weight = model.state_dict()["prompter.img_pe"]
    assert weight.dtype == torch.float32
    assert torch.equal(weight, state["prompter.img_pe"].float())


def test_missing_trained_tensor_is_refused(tmp_path, official_tiny2):
    state = {k: v for k, v in official_tiny2.items() if k != "prompter.prompt_embedding"}
    with pytest.raises(CheckpointError, match="lacks 'prompter.prompt_embedding'"):
        load_official_checkpoint(_tiny2(seed=1), _save(tmp_path, state))


def test_shape_mismatch_and_unknown_keys_are_refused_before_any_change(tmp_path, official_tiny2):
    model = _tiny2(seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrong = dict(official_tiny2) | {"prompter.img_pe": torch.zeros(1, 2, 3, 3)}
    with pytest.raises(CheckpointError, match="'prompter.img_pe' has shape"):
        load_official_checkpoint(model, _save(tmp_path, wrong))
    extra = dict(official_tiny2) | {"prompter.something_new": torch.zeros(2)}
    with pytest.raises(CheckpointError, match="'prompter.something_new' has no place"):
        load_official_checkpoint(model, _save(tmp_path, extra))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _not_rsrefseg2(tmp_path, kind):
    if kind == "sam1.pth":
        torch.save({"image_encoder.pos_embed": torch.zeros(1, 4, 4, 8)}, tmp_path / kind)
    elif kind == "sam2.1_hiera_tiny.pt":
        torch.save({"model": _random(meta_sam2_layout(TOY, hidden=32, mlp=64, iou_hidden=24), 0)}, tmp_path / kind)
    elif kind == "rsrefseg1.pth":
        keys = ["prompter.x", "backbone.model.mask_decoder.iou_token.weight"]  # SAM 1 in transformers' names
        torch.save({"state_dict": {k: torch.zeros(1) for k in keys}}, tmp_path / kind)
    elif kind == "model.safetensors.pth":
        save_file({"prompter.img_pe": torch.zeros(2)}, tmp_path / kind)
    elif kind == "scene.tif.pth":
        (tmp_path / kind).write_bytes(b"II*\x00" + bytes(256))
    else:
        (tmp_path / kind).write_bytes(np.random.default_rng(0).bytes(1000))
    return tmp_path / kind


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("sam1.pth", "not an RSRefSeg 2 checkpoint"),
        ("sam2.1_hiera_tiny.pt", "not an RSRefSeg 2 checkpoint"),
        ("rsrefseg1.pth", "RSRefSeg 1"),
        ("model.safetensors.pth", "not a readable PyTorch checkpoint"),
        ("scene.tif.pth", "not a readable PyTorch checkpoint"),
        ("junk.pt", "not a readable PyTorch checkpoint"),
    ],
)
def test_files_that_are_not_rsrefseg2_checkpoints_give_one_line(tmp_path, kind, message):
    path = _not_rsrefseg2(tmp_path, kind)
    assert not is_official_checkpoint(path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_official_checkpoint(_tiny2(seed=1), path)
    assert "\n" not in str(err.value)


def test_official_checkpoint_is_recognised_by_suffix_and_content(tmp_path, official_tiny2):
    path = _save(tmp_path, official_tiny2)
    assert is_official_checkpoint(path)
    renamed = path.rename(tmp_path / "rrsisd.bin")
    assert not is_official_checkpoint(renamed)
    assert not is_official_checkpoint(tmp_path / "absent.pth")


def test_load_model_routes_a_released_file_to_its_preset(tmp_path, monkeypatch):
    """``load_model("rrsisd.pth")`` (and a job's ``model.checkpoint``) builds the official preset and loads the
    file; here the preset is tiny2, as rsrefseg2-l needs the pretrained backbones."""
    source = _tiny2(seed=3)
    state = source.state_dict()
    with torch.no_grad():
        state["sam2." + TIED_POS].copy_(state["sam2." + POS])
    path = _save(tmp_path, official_state_dict(source))
    monkeypatch.setattr(official, "PRESET", "tiny2")
    config, checkpoint = resolve_model_spec(path)
    assert (config.name, checkpoint) == ("tiny2", path)
    loaded = load_model(str(path), device="cpu").state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_model_spec_of_a_bad_or_missing_pth_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_spec(tmp_path / "rrsisd.pth")
    with pytest.raises(CheckpointError, match="not an RSRefSeg 2 checkpoint"):
        resolve_model_spec(_not_rsrefseg2(tmp_path, "sam1.pth"))

import pytest
import torch
from safetensors import safe_open

from rsrs.core.errors import CheckpointError, ConfigError
from rsrs.model import load_model, save_checkpoint
from tests.model.conftest import random_tiles


def _perturbed_tiny():
    model = load_model("tiny", device="cpu")
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_checkpoint_round_trip_is_bit_identical(tmp_path):
    model = _perturbed_tiny()
    path = save_checkpoint(model, tmp_path / "ft.safetensors", config=model.config)
    loaded = load_model(path, device="cpu")
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor, restored[name]), name
    tiles = random_tiles(9, batch=1, height=64, width=64)
    assert torch.equal(model.predict(tiles, ["pond"]), loaded.predict(tiles, ["pond"]))


def test_checkpoint_holds_only_trained_parameters_and_the_config(tmp_path):
    model = _perturbed_tiny()
    path = save_checkpoint(model, tmp_path / "ft.safetensors", config=model.config)
    with safe_open(str(path), framework="pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
    assert keys == {n for n, p in model.named_parameters() if p.requires_grad}
    assert '"name":"tiny"' in metadata["rsrs_model_config"]


def test_checkpoint_that_does_not_fit_the_model_is_refused(tmp_path):
    from safetensors.torch import save_file

    model = load_model("tiny", device="cpu")
    path = save_checkpoint(model, tmp_path / "ok.safetensors", config=model.config)
    with safe_open(str(path), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    tensors["prompter.out.bias"] = torch.zeros(3)
    save_file(tensors, tmp_path / "bad.safetensors", metadata=metadata)
    with pytest.raises(CheckpointError, match="prompter.out.bias"):
        load_model(tmp_path / "bad.safetensors", device="cpu")


def test_unknown_preset_and_missing_checkpoint_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown model preset 'nope'.*tiny"):
        load_model("nope", device="cpu")
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors", device="cpu")

"""Reading .pt/.pth files safely: plain weights, and training files that pickle other objects beside them."""

from collections import OrderedDict

import numpy as np
import pytest
import torch

from rsrs.core.errors import CheckpointError
from rsrs.model.torch_files import read_meta_state, read_torch_file

CALLS: list[str] = []


def _record(what: str) -> str:
    CALLS.append(what)
    return what


class HistoryBuffer:
    """Like mmengine's logging objects: a class of the training framework, pickled by reference."""

    def __init__(self) -> None:
        self.values = [1.0, 2.0]


class Trap:
    """Unpickling this with a plain pickle load calls ``_record``: the restricted reader must not."""

    def __reduce__(self):
        return (_record, ("trap ran",))


def _weights(seed: int = 0) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        [("a.weight", torch.randn(3, 2, generator=g)), ("b.bias", torch.randn(4, generator=g).to(torch.bfloat16))]
    )


def test_plain_weights_read_with_the_safe_loader(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"state_dict": _weights()}, path)
    got = read_torch_file(path)["state_dict"]
    assert all(torch.equal(got[k], v) for k, v in _weights().items())
    assert got["b.bias"].dtype == torch.bfloat16


def test_training_objects_beside_the_weights_are_dropped_without_running_code(tmp_path):
    path = tmp_path / "epoch_10.pth"
    meta = {"epoch": 10, "seed": np.int64(3), "lr": np.float64(1e-4), "mean": np.zeros(3), "trap": Trap()}
    torch.save({"meta": meta, "state_dict": _weights(1), "message_hub": {"log": HistoryBuffer()}}, path)
    CALLS.clear()
    got = read_torch_file(path)
    assert CALLS == []
    assert list(got["state_dict"]) == ["a.weight", "b.bias"]
    assert all(torch.equal(got["state_dict"][k], v) for k, v in _weights(1).items())
    assert got["meta"]["epoch"] == 10


def test_a_meta_sam_file_is_unwrapped_from_model(tmp_path):
    path = tmp_path / "sam.pt"
    torch.save({"model": _weights(2)}, path)
    assert list(read_meta_state(path, what="x")) == ["a.weight", "b.bias"]


@pytest.mark.parametrize("content", [b"", b"II*\x00" + bytes(64), b"\x89PNG\r\n"])
def test_a_file_that_is_not_pytorch_is_one_clear_error(tmp_path, content):
    path = tmp_path / "scene.tif"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint") as err:
        read_torch_file(path)
    assert "\n" not in str(err.value)

"""The architecture table: a config's ``architecture`` picks its schema and builder, and a new one is one entry."""

from typing import Literal

import pytest

from rsrs.core.errors import ConfigError
from rsrs.model import architectures, build_model, get_model_config
from rsrs.model.architectures import ARCHITECTURES, Architecture
from rsrs.model.config import parse_model_config
from rsrs.model.rsrefseg.build import build_rsrefseg
from rsrs.model.rsrefseg.config import RSRefSegConfig


class ToyConfig(RSRefSegConfig):
    """A third architecture for the test: RSRefSeg's schema under another name."""

    architecture: Literal["toy"] = "toy"


def build_toy(config: ToyConfig, *, pretrained: bool, weights_root: object):
    model = build_rsrefseg(config, pretrained=pretrained, weights_root=weights_root)
    model.built_by = "build_toy"
    return model


@pytest.mark.parametrize("preset", ["tiny", "tiny2"])
def test_each_architecture_builds_its_preset_through_its_table_entry(preset):
    config = get_model_config(preset)
    entry = ARCHITECTURES[config.architecture]
    assert type(config) is entry.config
    model = build_model(config, device="meta", pretrained=False)
    kind, width, depth = model.mask_backbone_size()
    assert kind.startswith("SAM") and width > 0 and depth > 0
    assert type(model).__module__.startswith(entry.build.rpartition(".build:")[0])  # the architecture's own folder


def test_an_unknown_architecture_is_one_line_naming_the_choices():
    with pytest.raises(ConfigError, match=r"^model config x\.yaml: unknown architecture 'rsrefseg3'; choose one of "
                                          r"rsrefseg, rsrefseg2$"):  # fmt: skip
        parse_model_config({"architecture": "rsrefseg3", "name": "x"}, source="x.yaml")


def test_a_new_architecture_is_one_entry_in_the_table(monkeypatch):
    toy = Architecture(ToyConfig, f"{__name__}:build_toy")
    monkeypatch.setitem(architectures.ARCHITECTURES, "toy", toy)
    config = parse_model_config({**get_model_config("tiny").model_dump(), "architecture": "toy"}, source="toy.yaml")
    assert isinstance(config, ToyConfig)
    assert build_model(config, pretrained=False).built_by == "build_toy"

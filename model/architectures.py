"""The architectures rsrs builds, by the name a model config's ``architecture`` gives.

Each architecture is one folder under model/ (its config schema, builder and network) and one entry here: its
schema (light, read wherever a config is) and its builder (imported on use: it brings in the networks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING

from rsrs.core.errors import ConfigError
from rsrs.core.schema import StrictModel
from rsrs.model.rsrefseg.config import RSRefSegConfig
from rsrs.model.rsrefseg2.config import RSRefSeg2Config

if TYPE_CHECKING:
    from rsrs.model.segmenter import PairwiseSegmenter

#: A model config of any architecture (one member per entry of :data:`ARCHITECTURES`).
AnyModelConfig = RSRefSegConfig | RSRefSeg2Config


@dataclass(frozen=True)
class Architecture:
    """An architecture's config schema and where its builder lives (``module:function``)."""

    config: type[StrictModel]
    build: str

    def builder(self) -> Callable[..., PairwiseSegmenter]:
        """The builder: ``builder(config, *, pretrained, weights_root) -> model``."""
        module, _, name = self.build.partition(":")
        return getattr(import_module(module), name)


ARCHITECTURES = {
    "rsrefseg": Architecture(RSRefSegConfig, "rsrs.model.rsrefseg.build:build_rsrefseg"),
    "rsrefseg2": Architecture(RSRefSeg2Config, "rsrs.model.rsrefseg2.build:build_rsrefseg2"),
}


def architecture(name: str, *, source: str = "model config") -> Architecture:
    """The architecture called ``name``; an unknown name is one line naming ``source`` and the choices."""
    if name not in ARCHITECTURES:
        raise ConfigError(f"{source}: unknown architecture '{name}'; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]

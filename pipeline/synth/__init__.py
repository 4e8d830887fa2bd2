"""Seeded synthetic aerial scenes with referring expressions: chip datasets and large georeferenced scenes."""

from rsrs.pipeline.synth.chips import write_chip_dataset
from rsrs.pipeline.synth.scene import write_scene

__all__ = ["write_chip_dataset", "write_scene"]

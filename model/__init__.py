"""rsrs.model: the RSRefSeg network (SigLIP + AttnPrompter + SAM, LoRA). Knows nothing of GeoTIFFs or Dask.

>>> from rsrs.model import load_model
>>> m = load_model("tiny", device="cpu")
>>> probs = m.predict(images, ["the red building", "ponds"])  # B x 3 x H x W -> B x Q x H x W
"""

from rsrs.model.checkpoint import save_checkpoint
from rsrs.model.config import ModelConfig
from rsrs.model.errors import RsrsError
from rsrs.model.outputs import ImageFeatures, MaskOutput, TextFeatures
from rsrs.model.registry import build_model, get_model_config, list_models, load_model
from rsrs.model.rsrefseg import RSRefSeg

__all__ = [
    "ImageFeatures",
    "MaskOutput",
    "ModelConfig",
    "RSRefSeg",
    "RsrsError",
    "TextFeatures",
    "build_model",
    "get_model_config",
    "list_models",
    "load_model",
    "save_checkpoint",
]

"""rsrs.model: the RSRefSeg networks (RSRefSeg: SigLIP + AttnPrompter + SAM; RSRefSeg 2: SigLIP2 + cascaded
prompter + SAM 2.1; LoRA). Knows nothing of GeoTIFFs or Dask.

>>> from rsrs.model import load_model
>>> m = load_model("tiny", device="cpu")
>>> probs = m.predict(images, ["the red building", "ponds"])  # B x 3 x H x W -> B x Q x H x W

Names are imported on first use, so ``import rsrs.model`` alone does not load torch.
"""

from importlib import import_module

_EXPORTS = {
    "accelerate": "rsrs.model.acceleration",
    "save_checkpoint": "rsrs.model.checkpoint",
    "AnyModelConfig": "rsrs.model.architectures",
    "RSRefSegConfig": "rsrs.model.rsrefseg.config",
    "RSRefSeg2Config": "rsrs.model.rsrefseg2.config",
    "ImageFeatures": "rsrs.model.outputs",
    "MaskOutput": "rsrs.model.outputs",
    "TextFeatures": "rsrs.model.outputs",
    "BatchFn": "rsrs.model.predictor",
    "batch_predictor": "rsrs.model.predictor",
    "PairwiseSegmenter": "rsrs.model.segmenter",
    "build_model": "rsrs.model.registry",
    "get_model_config": "rsrs.model.config",
    "list_models": "rsrs.model.config",
    "load_model": "rsrs.model.registry",
    "resolve_model_spec": "rsrs.model.spec",
    "RSRefSeg": "rsrs.model.rsrefseg.model",
    "RSRefSeg2": "rsrs.model.rsrefseg2.model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rsrs.model' has no attribute {name!r}")

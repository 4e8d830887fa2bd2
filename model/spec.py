"""Which model a job names (a preset, a model config, a checkpoint), checked before anything is built.

Light to import: the networks (transformers' SAM, SAM 2, SigLIP) are not, so `rsrs run` checks its model and then
opens its scenes without waiting for them, and a wrong input path is one line in seconds. A released RSRefSeg 2
``.pth`` is read with the official loader, which imports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rsrs.core.errors import ConfigError, WeightsNotFoundError
from rsrs.model.architectures import AnyModelConfig
from rsrs.model.checkpoint import read_checkpoint_config
from rsrs.model.config import get_model_config, load_model_config
from rsrs.model.rsrefseg2.config import OFFICIAL_SUFFIXES
from rsrs.model.tokenizer import build_tokenizer
from rsrs.model.tokenizer import check_query_lengths as check_lengths


def resolve_model_spec(spec: str | Path | AnyModelConfig) -> tuple[AnyModelConfig, Path | None]:
    """(config, checkpoint path or None) for a preset name, a config YAML, a checkpoint or a config object."""
    if isinstance(spec, AnyModelConfig):
        return spec, None
    path = Path(spec).expanduser()
    if path.suffix in OFFICIAL_SUFFIXES:  # a released RSRefSeg 2 file (KyanChen/RSRefSeg2: rrsisd.pth, ...)
        from rsrs.model.rsrefseg2.official import official_preset  # the official loader imports SAM 2

        return get_model_config(official_preset(path)), path
    if path.suffix == ".safetensors":
        if not path.exists():
            raise ConfigError(f"checkpoint {path} does not exist; check the path (relative to {Path.cwd()})")
        return read_checkpoint_config(path), path
    if path.suffix in {".yaml", ".yml"}:
        if not path.exists():
            raise ConfigError(f"model config {path} does not exist; check the path")
        return load_model_config(path), None
    if path.suffix or path.exists():
        kind = f"a {path.suffix} file" if path.suffix else "a folder or a file without a suffix"
        raise ConfigError(
            f"model {spec} is {kind}; give a preset name (see `rsrs models`), a model config .yaml, "
            "a checkpoint .safetensors written by `rsrs train`, or a released RSRefSeg 2 .pth"
        )
    return get_model_config(str(spec)), None


def check_query_lengths(config: AnyModelConfig, texts: Sequence[str]) -> None:
    """Fail when a query is longer than ``config``'s model reads, if its tokenizer is at hand here (a client
    without the pretrained tokenizer files leaves the check to the workers, which load the model)."""
    try:
        tokenizer = build_tokenizer(config.siglip, pretrained=True, weights_root=None, download=False)
    except WeightsNotFoundError:
        return
    check_lengths(tokenizer, texts)

"""The one inference protocol every architecture offers, so the pipeline, training and evaluation never ask
which architecture runs (DESIGN §4): image features once per tile, text features once per job, a cheap decode
per tile x query."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from rsrs.model.outputs import ImageFeatures, MaskOutput, TextFeatures
from rsrs.model.tokenizer import Tokenizer


class ReferringModel(Protocol):
    """What :func:`rsrs.model.load_model` returns, whatever ``config.architecture`` names."""

    config: Any
    tokenizer: Tokenizer

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """Both image encoders once per image; images B x 3 x H x W uint8 or float in [0, 1]."""

    def encode_texts(self, texts: Sequence[str]) -> TextFeatures:
        """The queries' text features, once per job."""

    def decode(self, images: ImageFeatures, texts: TextFeatures, *, max_pairs: int = 64) -> MaskOutput:
        """Masks of every (image, query) pair: logits B x Q x H x W."""

    def forward(self, images: torch.Tensor | ImageFeatures, texts: Sequence[str] | TextFeatures) -> MaskOutput:
        """The differentiable training path: query i refers to image i; logits B x 1 x H x W."""

    def predict(
        self, images: torch.Tensor, queries: Sequence[str] | TextFeatures, *, max_pairs: int = 64
    ) -> torch.Tensor:
        """Probabilities B x Q x H x W (eval mode, no grad), without host-device synchronisation."""

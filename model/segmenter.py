"""The inference protocol every architecture shares, so the pipeline, training and evaluation never ask which runs.

An architecture implements ``encode_images`` (both image encoders, once per tile), ``encode_texts`` (once per job),
``decode_pairs`` (prompter + mask decoder for indexed (image, query) pairs), ``forward`` (training) and ``loss``;
this base class derives ``decode`` (every image with every query, in chunks) and ``predict`` (eval, no grad,
probabilities) from them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rsrs.model.outputs import ImageFeatures, MaskOutput, TextFeatures


class PairwiseSegmenter(nn.Module):
    """Base of the model classes: ``decode`` and ``predict`` on top of the architecture's three stages."""

    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """Both image encoders once per image; images: B x 3 x H x W, uint8 or float in [0, 1]."""
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str]) -> TextFeatures:
        """Tokenise and encode queries once."""
        raise NotImplementedError

    def decode_pairs(
        self, images: ImageFeatures, texts: TextFeatures, image_index: torch.Tensor, text_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks of P pairs: image_index, text_index P (long) -> logits P x H x W, activation P x ..."""
        raise NotImplementedError

    def mask_backbone_size(self) -> tuple[str, int, int]:
        """(kind, width, depth) of the backbone that draws the masks, as `rsrs models` lists it."""
        raise NotImplementedError

    def decode(self, images: ImageFeatures, texts: TextFeatures, *, max_pairs: int = 64) -> MaskOutput:
        """Masks for every (image, query) combination, decoded in chunks of at most ``max_pairs`` pairs.

        returns logits B x Q x H x W (H, W = the tiles' input size) and the activation B x Q x ...
        """
        B, Q = len(images), len(texts)
        device = images.siglip.device
        image_index = torch.arange(B, device=device).repeat_interleave(Q)  # P = B*Q, image-major
        text_index = torch.arange(Q, device=device).repeat(B)
        logits, activation = [], []
        for start in range(0, B * Q, max_pairs):
            chunk = slice(start, start + max_pairs)
            lg, act = self.decode_pairs(images, texts, image_index[chunk], text_index[chunk])
            logits.append(lg)
            activation.append(act)
        H, W = images.input_shape
        return MaskOutput(
            logits=torch.cat(logits).reshape(B, Q, H, W),
            activation=torch.cat(activation).reshape(B, Q, *activation[0].shape[1:]),
        )

    @torch.inference_mode()
    def predict(
        self, images: torch.Tensor, queries: Sequence[str] | TextFeatures, *, max_pairs: int = 64
    ) -> torch.Tensor:
        """Probabilities of every query on every image (eval mode, no grad).

        images: B x 3 x H x W uint8 or float in [0, 1]  ->  B x Q x H x W float32 on the images' device
        """
        was_training = self.training
        self.eval()
        try:
            text = queries if isinstance(queries, TextFeatures) else self.encode_texts(queries)
            out = self.decode(self.encode_images(images), text, max_pairs=max_pairs)
            return torch.sigmoid(out.logits.float()).to(images.device)
        finally:
            self.train(was_training)

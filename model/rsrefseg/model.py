"""RSRefSeg: SigLIP features, activated by the query text, prompt SAM to draw the referred mask.

The inference API separates the three costs: ``encode_images`` (both image encoders, once per tile),
``encode_texts`` (once per job) and ``decode`` (prompter + SAM mask decoder, per tile x query), so Q queries over
B tiles cost B image encodings and B*Q cheap decodes. ``forward`` is the differentiable training path (one
query per image) and ``loss`` its objective; ``decode`` and ``predict`` (eval, no grad, probabilities) come from
:class:`~rsrs.model.segmenter.PairwiseSegmenter`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from transformers import SamModel, SiglipModel

from rsrs.model.fourier_features import fourier_encoding, image_wide_fourier_encoding
from rsrs.model.lora import TrainableSet
from rsrs.model.losses import LossOutput, bce_dice_loss
from rsrs.model.outputs import ImageFeatures, MaskOutput, TextFeatures
from rsrs.model.preprocess import sam_logits_to_input, sam_pixels, siglip_pixels, to_unit_float
from rsrs.model.rsrefseg.config import RSRefSegConfig
from rsrs.model.rsrefseg.prompter import AttnPrompter
from rsrs.model.segmenter import PairwiseSegmenter
from rsrs.model.tokenizer import Tokenizer

LORA_TARGETS = "|".join(
    [
        r"sam\.vision_encoder\.layers\.\d+\.attn\.(qkv|proj)",
        r"sam\.vision_encoder\.layers\.\d+\.mlp\.(lin1|lin2)",
        r"sam\.vision_encoder\.neck\.conv[12]",
        r"siglip\.(vision|text)_model\.encoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj",
        r"siglip\.text_model\.head",
    ]
)

_TRAINED_MODULES = re.compile(
    r"^(prompter\.|sam\.mask_decoder\.|sam\.prompt_encoder\.(?!shared_embedding\.)|siglip\.logit_(scale|bias)$)"
)
# LoRA on SAM's image encoder (qkv, proj, lin1, lin2, the neck convolutions) and on SigLIP's vision and text
# attention projections and text head (DESIGN §4). Trained besides LoRA: the prompter, SAM's prompt encoder (its
# learned embeddings; the Fourier matrix is a fixed buffer in Meta's SAM) and mask decoder, SigLIP's logit scale/bias.
RSREFSEG_TRAINABLE = TrainableSet(
    lora_targets=LORA_TARGETS,
    trained=_TRAINED_MODULES,
    image_encoders=("sam.vision_encoder.", "siglip.vision_model."),
)


class RSRefSeg(PairwiseSegmenter):
    """SigLIP + AttnPrompter + SAM. Build it with :func:`rsrs.model.build_model` or :func:`load_model`."""

    trainable_set: ClassVar[TrainableSet] = RSREFSEG_TRAINABLE

    def __init__(
        self,
        *,
        siglip: SiglipModel,
        sam: SamModel,
        prompter: AttnPrompter,
        tokenizer: Tokenizer,
        config: RSRefSegConfig,
    ) -> None:
        super().__init__()
        self.siglip = siglip
        self.sam = sam
        self.prompter = prompter
        self.tokenizer = tokenizer
        self.config = config
        self.sam_image_size = sam.config.vision_config.image_size
        self.siglip_image_size = siglip.config.vision_config.image_size
        patches = self.siglip_image_size // siglip.config.vision_config.patch_size
        self.siglip_grid = (patches, patches)

    def mask_backbone_size(self) -> tuple[str, int, int]:
        """(kind, width, depth) of the mask backbone, as `rsrs models` lists it."""
        vision = self.sam.config.vision_config
        return "SAM ViT", vision.hidden_size, vision.num_hidden_layers

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return self.prompter.out.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's parameters."""
        return self.prompter.out.weight.dtype

    # ---- the three stages -------------------------------------------------------------------------------------

    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """Run both image encoders once per image.

        images: B x 3 x H x W, uint8 in [0, 255] or float in [0, 1], any device
        """
        x = to_unit_float(images.to(self.device))
        sam_in, valid_shape = sam_pixels(x, self.sam_image_size)  # B x 3 x 1024 x 1024
        siglip_in = siglip_pixels(x, self.siglip_image_size)  # B x 3 x 384 x 384
        sam_emb = self.sam.vision_encoder(sam_in.to(self.dtype)).last_hidden_state  # B x 256 x 64 x 64
        tokens = self.siglip.vision_model(pixel_values=siglip_in.to(self.dtype)).last_hidden_state  # B x 729 x C
        return ImageFeatures(
            sam=sam_emb,
            siglip=tokens,
            grid=self.siglip_grid,
            input_shape=tuple(images.shape[-2:]),
            valid_shape=valid_shape,
        )

    def encode_texts(self, texts: Sequence[str]) -> TextFeatures:
        """Tokenise and encode queries once: local token states, their padding mask, and the pooled feature."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("encode_texts needs at least one query")
        tok = self.tokenizer(texts)
        ids, valid = tok.input_ids.to(self.device), tok.valid.to(self.device)  # Q x L each
        if self.config.siglip.text_pooling == "last":
            out = self.siglip.text_model(input_ids=ids)
            tokens, pooled = out.last_hidden_state, out.pooler_output  # Q x L x C, Q x C
        else:  # the end-of-text token (each query's last real token), padding masked out of attention
            tokens = self.siglip.text_model(input_ids=ids, attention_mask=valid.long()).last_hidden_state
            eos = valid.sum(dim=1) - 1  # Q
            pooled = self.siglip.text_model.head(tokens[torch.arange(len(texts), device=self.device), eos])
        return TextFeatures(tokens=tokens, valid=valid, pooled=pooled, texts=texts)

    def decode_pairs(
        self, images: ImageFeatures, texts: TextFeatures, image_index: torch.Tensor, text_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompter + SAM mask decoder for P pairs given by index.

        image_index, text_index: P (long)  ->  logits P x H x W, activation P x ny x nx
        """
        prompts = self.prompter(
            images.siglip[image_index],
            texts.pooled[text_index],
            texts.tokens[text_index],
            texts.valid[text_index],
            grid=images.grid,
            positional=self.grid_positional_encoding(images.grid),
            logit_scale=self.siglip.logit_scale,
            logit_bias=self.siglip.logit_bias,
        )
        emb = images.sam[image_index]  # P x D x Hs x Ws
        P, D, Hs, Ws = emb.shape
        mask_input = F.interpolate(  # the dense prompt: P x 1 x 4Hs x 4Ws (256 x 256 for SAM)
            prompts.activation[:, None], size=(4 * Hs, 4 * Ws), mode="bilinear", align_corners=False
        )
        dense = self.sam.prompt_encoder.mask_embed(mask_input.to(emb.dtype))  # P x D x Hs x Ws
        image_pe = image_wide_fourier_encoding(self.sam).to(emb.dtype).expand(P, -1, -1, -1)
        masks, _ = self.sam.mask_decoder(
            image_embeddings=emb,
            image_positional_embeddings=image_pe,
            sparse_prompt_embeddings=prompts.sparse[:, None].to(emb.dtype),  # P x 1 x 49 x D
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )  # P x 1 x 1 x 4Hs x 4Ws, token 0
        logits = sam_logits_to_input(
            masks[:, 0, 0].float(),
            sam_size=self.sam_image_size,
            valid_shape=images.valid_shape,
            input_shape=images.input_shape,
        )
        return logits, prompts.activation

    def grid_positional_encoding(self, grid: tuple[int, int]) -> torch.Tensor:
        """SAM's random-Fourier positional encoding sampled at the centres of an ny x nx grid: D x ny x nx."""
        ny, nx = grid
        pe = self.sam.shared_image_embedding
        ref = pe.positional_embedding
        ys = (torch.arange(ny, device=ref.device, dtype=ref.dtype) + 0.5) / ny
        xs = (torch.arange(nx, device=ref.device, dtype=ref.dtype) + 0.5) / nx
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return fourier_encoding(pe, torch.stack([xx, yy], dim=-1)).permute(2, 0, 1)  # D x ny x nx

    # ---- training and inference entry points ------------------------------------------------------------------

    def forward(self, images: torch.Tensor | ImageFeatures, texts: Sequence[str] | TextFeatures) -> MaskOutput:
        """Differentiable path for training: query ``i`` refers to image ``i``.

        images: B x 3 x H x W, or their features when the image encoders are frozen and cached; texts: B queries
        ->  logits B x 1 x H x W
        """
        feats = images if isinstance(images, ImageFeatures) else self.encode_images(images)
        text = texts if isinstance(texts, TextFeatures) else self.encode_texts(texts)
        if len(text) != len(feats):
            raise ValueError(f"forward pairs image i with query i: got {len(feats)} images, {len(text)} queries")
        index = torch.arange(len(feats), device=feats.sam.device)
        logits, activation = self.decode_pairs(feats, text, index, index)
        return MaskOutput(logits=logits[:, None], activation=activation[:, None])

    def loss(
        self, output: MaskOutput, masks: torch.Tensor, *, bce_weight: float = 5.0, dice_weight: float = 5.0
    ) -> LossOutput:
        """``bce_weight * BCE + dice_weight * Dice`` of ``forward``'s logits; masks: B x H x W in {0, 1}."""
        return bce_dice_loss(output.logits[:, 0], masks, bce_weight=bce_weight, dice_weight=dice_weight)

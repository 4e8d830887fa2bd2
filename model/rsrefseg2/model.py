"""RSRefSeg 2: SigLIP2 features and cascaded text queries prompt SAM 2.1 to draw the referred mask.

Computed as the official code (``KyanChen/RSRefSeg2``, ``refseg/models/models.py``) does with its configuration:

- Pixels: the tile's longest side resized to SAM 2's 1024 and zero-padded (in [0, 1]) bottom/right to a square, as
  the official data pipeline feeds it. SAM 2 sees that square normalised with ImageNet statistics; SigLIP2 sees it
  normalised with its processor's statistics, then resized to 512 (bilinear, no antialiasing).
- SAM 2.1 (transformers ``Sam2Model``): Hiera + FPN; the two high-resolution maps go through the mask decoder's
  ``conv_s0``/``conv_s1`` once per tile (as SAM 2's ``forward_image`` does), and the no-memory embedding is added
  to the lowest-resolution map (official ``no_mem_embed``, transformers ``no_memory_embedding``).
- SigLIP2 so400m/16 at 512 (a transformers ``SiglipModel``): 32 x 32 patch tokens (``last_hidden_state``); the
  vision pooling head exists (its LoRA is in the official checkpoint) but is not run, as its output is unused. Text:
  Gemma tokenizer, queries padded to the longest and truncated at 128 tokens (and at the model's position limit),
  attention mask passed; token states and the pooled feature (the head on the last position).
- :class:`~rsrs.model.rsrefseg2.prompter.CascadedPrompter` -> 9 sparse prompts and a dense prompt (256 x 256
  logits), which SAM 2's prompt encoder embeds; SAM 2's mask decoder with single-mask output (in eval mode SAM 2.1
  falls back to the best of its multimask outputs when the single mask is unstable, as the official model does).

Name contract (relied on by the loader of the official checkpoints; parameter names, top two levels):

- ``sam2`` (transformers ``Sam2Model``): ``sam2.vision_encoder`` (``.backbone`` Hiera, ``.neck`` FPN),
  ``sam2.prompt_encoder``, ``sam2.mask_decoder``, ``sam2.no_memory_embedding`` (official
  ``backbone.model.no_mem_embed``); buffers ``sam2.shared_image_embedding.positional_embedding`` and
  ``sam2.prompt_encoder.shared_embedding.positional_embedding`` both hold SAM 2's ``pe_layer`` matrix (the one
  ``decode`` uses is the former, as transformers' own forward does).
- ``siglip`` (transformers ``SiglipModel``): ``siglip.vision_model`` (``.embeddings``, ``.encoder``,
  ``.post_layernorm``, ``.head``), ``siglip.text_model`` (``.embeddings``, ``.encoder``, ``.final_layer_norm``,
  ``.head``), ``siglip.logit_scale``, ``siglip.logit_bias`` (official ``clip_text_encoder.logit_scale/_bias``).
- ``prompter``: names equal to the official ``prompter.`` names: ``text_query_pe_embedding1``,
  ``text_query_pe_embedding2``, ``two_queries_text_attn_layers.{0,1}.<operation>``, ``img_pe``,
  ``queries1_to_img_attn_layers.{0,1}.<operation>``, ``prompt_queries2_img_attn_layers.{0,1}.<operation>``,
  ``prompt_pe_embedding``, ``prompt_embedding``, ``sparse_prompt_mlp.layers.{0,1}``, ``dense_prompt_conv.{0,1,3}``
  (``.1`` is a BatchNorm: also buffers ``running_mean/running_var/num_batches_tracked``); ``<operation>`` is an
  operation name of the config (attention: ``q_proj/k_proj/v_proj/out_proj``; MLP: ``layers.{0,1}``; LayerNorm:
  ``weight/bias``).
- ``decode_head``: ``logit_scale2``, ``logit_bias2`` (official ``decode_head.``, the contrastive term's
  temperature and bias; the official ``logit_scale1``/``logit_bias1`` serve loss terms its configuration leaves
  off, so they stay at init there and are not built here).
- LoRA (peft, adapter ``default``): ``<module>.lora_A.default.weight``, ``<module>.lora_B.default.weight`` and the
  wrapped layer's weights under ``<module>.base_layer.`` (see :data:`RSREFSEG2_TRAINABLE`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Sam2Model, SiglipModel

from rsrs.model.fourier_features import image_wide_fourier_encoding
from rsrs.model.lora import TrainableSet
from rsrs.model.losses import LossOutput
from rsrs.model.outputs import ImageFeatures, TextFeatures
from rsrs.model.preprocess import SAM_MEAN, SAM_STD, normalize, resize_longest, sam_logits_to_input, to_unit_float
from rsrs.model.rsrefseg2.config import RSRefSeg2Config
from rsrs.model.rsrefseg2.losses import rsrefseg2_loss
from rsrs.model.rsrefseg2.outputs import RSRefSeg2Output, Sam2ImageFeatures
from rsrs.model.rsrefseg2.prompter import CascadedPrompter, CascadeOutput
from rsrs.model.segmenter import PairwiseSegmenter
from rsrs.model.tokenizer import Tokenizer

# The official LoRA targets (configs_RSRefSeg2/*.py, ``lora_cfg``) in transformers' module names.
RSREFSEG2_TRAINABLE = TrainableSet(
    lora_targets="|".join(
        [
            r"sam2\.vision_encoder\.backbone\.blocks\.\d+\.attn\.(qkv|proj)",
            r"sam2\.vision_encoder\.neck\.convs\.\d+",
            r"siglip\.vision_model\.encoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj",
            r"siglip\.vision_model\.head\.(attention\.out_proj|mlp\.fc[12])",
            r"siglip\.text_model\.encoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj",
            r"siglip\.text_model\.head",
        ]
    ),
    # what the official model leaves trainable besides LoRA
    trained=re.compile(
        r"^(prompter\.|decode_head\.|sam2\.mask_decoder\.|sam2\.prompt_encoder\.|sam2\.no_memory_embedding$"
        r"|siglip\.logit_(scale|bias)$)"
    ),
    # every parameter encode_images uses (conv_s0/conv_s1 and the no-memory embedding are applied there)
    image_encoders=(
        "sam2.vision_encoder.",
        "sam2.mask_decoder.conv_s0.",
        "sam2.mask_decoder.conv_s1.",
        "sam2.no_memory_embedding",
        "siglip.vision_model.",
    ),
)


class ContrastiveHead(nn.Module):
    """Learnable temperature (log) and bias of the contrastive loss term, initialised as the official head's."""

    def __init__(self) -> None:
        super().__init__()
        self.logit_scale2 = nn.Parameter(torch.full((), math.log(1 / 0.07)))
        self.logit_bias2 = nn.Parameter(torch.full((), math.log(0.5)))


class RSRefSeg2(PairwiseSegmenter):
    """SigLIP2 + cascaded prompter + SAM 2.1. Build it with :func:`rsrs.model.build_model` or :func:`load_model`."""

    trainable_set: ClassVar[TrainableSet] = RSREFSEG2_TRAINABLE

    def __init__(
        self,
        *,
        sam2: Sam2Model,
        siglip: SiglipModel,
        prompter: CascadedPrompter,
        decode_head: ContrastiveHead,
        tokenizer: Tokenizer,
        config: RSRefSeg2Config,
    ) -> None:
        super().__init__()
        self.sam2 = sam2
        self.siglip = siglip
        self.prompter = prompter
        self.decode_head = decode_head
        self.tokenizer = tokenizer
        self.config = config
        self.siglip.vision_model.use_head = False  # its pooled output is unused (official computes and drops it)
        self.sam_image_size = sam2.config.prompt_encoder_config.image_size
        self.mask_size = tuple(sam2.prompt_encoder.mask_input_size)
        self.siglip_image_size = siglip.config.vision_config.image_size
        patches = self.siglip_image_size // siglip.config.vision_config.patch_size
        self.siglip_grid = (patches, patches)
        self.text_positions = siglip.config.text_config.max_position_embeddings

    def mask_backbone_size(self) -> tuple[str, int, int]:
        """(kind, width, depth) of the mask backbone, as `rsrs models` lists it."""
        hiera = self.sam2.config.vision_config.backbone_config
        return "SAM 2 Hiera", hiera.hidden_size, sum(hiera.blocks_per_stage)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return self.prompter.prompt_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's parameters."""
        return self.prompter.prompt_embedding.dtype

    # ---- the three stages -------------------------------------------------------------------------------------

    def encode_images(self, images: torch.Tensor) -> Sam2ImageFeatures:
        """Run both image encoders once per image.

        images: B x 3 x H x W, uint8 in [0, 255] or float in [0, 1], any device
        """
        x = to_unit_float(images.to(self.device))
        S = self.sam_image_size
        x, (h, w) = resize_longest(x, S)
        square = F.pad(x, (0, S - w, 0, S - h))  # B x 3 x S x S in [0, 1], zero padding
        sam_in = normalize(square, SAM_MEAN, SAM_STD)
        spec = self.config.siglip
        siglip_in = F.interpolate(  # B x 3 x 512 x 512
            normalize(square, spec.image_mean, spec.image_std),
            size=(self.siglip_image_size, self.siglip_image_size),
            mode="bilinear",
            align_corners=False,
        )
        fpn = self.sam2.vision_encoder(sam_in.to(self.dtype)).fpn_hidden_states  # high -> low resolution
        decoder = self.sam2.mask_decoder
        emb = fpn[-1] + self.sam2.no_memory_embedding.reshape(1, -1, 1, 1)  # B x 256 x 64 x 64
        tokens = self.siglip.vision_model(pixel_values=siglip_in.to(self.dtype)).last_hidden_state  # B x 1024 x C
        return Sam2ImageFeatures(
            sam=emb,
            siglip=tokens,
            grid=self.siglip_grid,
            input_shape=tuple(images.shape[-2:]),
            valid_shape=(h, w),
            sam_s0=decoder.conv_s0(fpn[0]),  # B x 32 x 256 x 256
            sam_s1=decoder.conv_s1(fpn[1]),  # B x 64 x 128 x 128
        )

    def encode_texts(self, texts: Sequence[str]) -> TextFeatures:
        """Tokenise and encode queries once: token states, their padding mask, and the pooled feature."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("encode_texts needs at least one query")
        tok = self.tokenizer(texts)
        # beyond the position limit (64 for SigLIP2) the official code fails; cut there instead
        ids = tok.input_ids[:, : self.text_positions].to(self.device)  # Q x L
        valid = tok.valid[:, : self.text_positions].to(self.device)
        out = self.siglip.text_model(input_ids=ids, attention_mask=valid.long())
        return TextFeatures(tokens=out.last_hidden_state, valid=valid, pooled=out.pooler_output, texts=texts)

    def decode_pairs(
        self, images: ImageFeatures, texts: TextFeatures, image_index: torch.Tensor, text_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cascaded prompter + SAM 2 mask decoder for P pairs given by index.

        image_index, text_index: P (long)  ->  logits P x H x W, activation P x m x m (the dense prompt logits)
        """
        logits, prompts = self._decode(images, texts, image_index, text_index)
        return logits, prompts.dense[:, 0]

    def _decode(
        self, images: Sam2ImageFeatures, texts: TextFeatures, image_index: torch.Tensor, text_index: torch.Tensor
    ) -> tuple[torch.Tensor, CascadeOutput]:
        prompts = self.prompter(
            images.siglip[image_index],
            texts.tokens[text_index],
            texts.pooled[text_index],
            grid=images.grid,
            mask_size=self.mask_size,
            logit_scale=self.siglip.logit_scale,
            logit_bias=self.siglip.logit_bias,
        )
        emb = images.sam[image_index]  # P x D x Hs x Ws
        P = emb.shape[0]
        dense = self.sam2.prompt_encoder.mask_embed(prompts.dense.to(emb.dtype))  # P x D x Hs x Ws
        image_pe = image_wide_fourier_encoding(self.sam2).to(emb.dtype).expand(P, -1, -1, -1)
        masks, *_ = self.sam2.mask_decoder(
            image_embeddings=emb,
            image_positional_embeddings=image_pe,
            sparse_prompt_embeddings=prompts.sparse[:, None].to(emb.dtype),  # P x 1 x 9 x D
            dense_prompt_embeddings=dense,
            multimask_output=False,
            high_resolution_features=[images.sam_s0[image_index], images.sam_s1[image_index]],
        )  # P x 1 x 1 x 4Hs x 4Ws
        logits = sam_logits_to_input(
            masks[:, 0, 0].float(),
            sam_size=self.sam_image_size,
            valid_shape=images.valid_shape,
            input_shape=images.input_shape,
        )
        return logits, prompts

    # ---- training ---------------------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor | ImageFeatures, texts: Sequence[str] | TextFeatures) -> RSRefSeg2Output:
        """Differentiable path for training: query ``i`` refers to image ``i``.

        images: B x 3 x H x W, or their features; texts: B queries  ->  logits B x 1 x H x W plus what ``loss``
        needs
        """
        feats = images if isinstance(images, ImageFeatures) else self.encode_images(images)
        text = texts if isinstance(texts, TextFeatures) else self.encode_texts(texts)
        if len(text) != len(feats):
            raise ValueError(f"forward pairs image i with query i: got {len(feats)} images, {len(text)} queries")
        index = torch.arange(len(feats), device=feats.sam.device)
        logits, prompts = self._decode(feats, text, index, index)
        return RSRefSeg2Output(
            logits=logits[:, None],
            activation=prompts.dense,
            queries1=prompts.queries1,
            queries2=prompts.queries2,
            patches=feats.siglip,
            grid=feats.grid,
            # taken here, so every trained parameter is used inside the (DDP-wrapped) forward
            contrastive_scale=self.decode_head.logit_scale2.exp(),
            contrastive_bias=self.decode_head.logit_bias2.clone(),
        )

    def loss(self, output: RSRefSeg2Output, masks: torch.Tensor, **weights: float) -> LossOutput:
        """The official objective; ``weights`` and their defaults: :func:`~rsrs.model.rsrefseg2.losses.rsrefseg2_loss`.
        masks: B x H x W."""
        return rsrefseg2_loss(output, masks, **weights)

"""The official RSRefSeg 2 checkpoint's keys and shapes, written down from ``KyanChen/RSRefSeg2`` independently of
``rsrs.model.rsrefseg2.official``: ``refseg/models/models.py`` (RefSegEncoderDecoder wraps four submodules with
peft's ``get_peft_model``; RefSegSam keeps Meta's SAM 2 under ``backbone.model.`` minus its video-only modules;
CascadedPrompter builds its blocks from operation names; PseudoSegHead holds four logit scalars) and
``configs_RSRefSeg2/*_training.py`` (``lora_cfg`` target regexes, prompter options).
"""

import re

import torch
from transformers import SiglipConfig, SiglipModel

from tests.model.rsrefseg2.meta_sam2 import meta_sam2_layout

R = 16  # lora_cfg r
LORA_SAM2 = r"trunk\.blocks\.\d+\.attn\.(qkv|proj)|neck\.convs\.\d+\.conv"
LORA_TEXT = r"model\.head|model\.encoder\.layers\.\d+\.self_attn\.(k_proj|v_proj|q_proj|out_proj)"
LORA_VISION = r"model\.head\.(attention\.out_proj|mlp\.fc[12])|" + LORA_TEXT.split("|", 1)[1]


def peft_wrapped(layout: dict[str, tuple], targets: str, prefix: str) -> dict[str, tuple]:
    """``get_peft_model(module, LoraConfig(target_modules=targets))`` as stored under ``prefix``: the module becomes
    ``base_model.model.``; each targeted layer keeps its tensors under ``base_layer.`` and gains
    ``lora_A.default`` (r x in, or r x in x k x k for a conv) and ``lora_B.default`` (out x r, or out x r x 1 x 1)."""
    out = {}
    for key, shape in layout.items():
        module, _, leaf = key.rpartition(".")
        if not re.fullmatch(targets, module):
            out[f"{prefix}base_model.model.{key}"] = shape
            continue
        base = f"{prefix}base_model.model.{module}."
        out[base + f"base_layer.{leaf}"] = shape
        if leaf == "weight":
            out[base + "lora_A.default.weight"] = (R, shape[1], *shape[2:])
            out[base + "lora_B.default.weight"] = (shape[0], R, *(1,) * (len(shape) - 2))
    return out


def _attention(prefix, q_dim, kv_dim, inner):
    s = {}
    for name, n_in in (("q_proj", q_dim), ("k_proj", kv_dim), ("v_proj", kv_dim)):
        s |= {f"{prefix}{name}.weight": (inner, n_in), f"{prefix}{name}.bias": (inner,)}
    return s | {f"{prefix}out_proj.weight": (q_dim, inner), f"{prefix}out_proj.bias": (q_dim,)}


def _mlp(prefix, dim, hidden):
    return {
        f"{prefix}layers.0.weight": (hidden, dim),
        f"{prefix}layers.0.bias": (hidden,),
        f"{prefix}layers.1.weight": (dim, hidden),
        f"{prefix}layers.1.bias": (dim,),
    }


# The official blocks' ``__init__`` chains: (substring of the operation name, module, query operand, key operand)
QUERY_BLOCK = [  # TwoQueryTextCrossAttentionBlock: every operand is text-wide
    ("self_attn_query", "attn", "text", "text"),
    ("cross_attn_query_text", "attn", "text", "text"),
    ("cross_attn_query_query", "attn", "text", "text"),
    ("mlp_query", "mlp", "text", None),
    ("norm_query", "norm", "text", None),
]
PIT_BLOCK = [  # PITCrossAttentionBlock
    ("self_attn_prompt", "attn", "prompt", "prompt"),
    ("self_attn_text", "attn", "text", "text"),
    ("cross_attn_img_text", "attn", "img", "text"),
    ("cross_attn_prompt_text", "attn", "prompt", "text"),
    ("cross_attn_prompt_img", "attn", "prompt", "img"),
    ("norm_prompt", "norm", "prompt", None),
    ("norm_img", "norm", "img", None),
    ("norm_text", "norm", "text", None),
    ("mlp_prompt", "mlp", "prompt", None),
    ("mlp_img", "mlp", "img", None),
    ("mlp_text", "mlp", "text", None),
]


def _block(prefix, ops, chain, dims, *, mlp, inner):
    """One official block: each operation builds the module of the first chain entry its name contains."""
    s = {}
    for op in ops:
        kind, q, kv = next((k, q, kv) for sub, k, q, kv in chain if sub in op)
        p = f"{prefix}{op}."
        if kind == "attn":
            s |= _attention(p, dims[q], dims[kv], inner)
        elif kind == "norm":
            s |= {p + "weight": (dims[q],), p + "bias": (dims[q],)}
        else:
            s |= _mlp(p, dims[q], mlp)
    return s


def prompter_layout(spec, *, text, img, prompt, grid) -> dict[str, tuple]:
    """CascadedPrompter with the official options (text queries: has_pe, 'textpool'; prompts: has_pe,
    'learnable'; img_pe 'learnable'; dense prompt from 'text_pool' through the internal conv)."""
    dims = {"text": text, "img": img, "prompt": prompt}
    nq, npr = spec.num_queries, spec.num_prompts
    s = {"prompter.text_query_pe_embedding1": (nq, text), "prompter.text_query_pe_embedding2": (nq, text)}
    s |= {"prompter.img_pe": (1, img, grid, grid)}
    blocks = [
        ("two_queries_text_attn_layers", spec.query_depth, spec.query_operations, QUERY_BLOCK),
        ("queries1_to_img_attn_layers", spec.image_depth, spec.image_operations, PIT_BLOCK),
        ("prompt_queries2_img_attn_layers", spec.prompt_depth, spec.prompt_operations, PIT_BLOCK),
    ]
    for name, depth, ops, chain in blocks:
        for i in range(depth):
            s |= _block(f"prompter.{name}.{i}.", ops, chain, dims, mlp=spec.mlp_dim, inner=spec.internal_dim)
    s |= {"prompter.prompt_pe_embedding": (npr, prompt), "prompter.prompt_embedding": (npr, prompt)}
    s |= _mlp("prompter.sparse_prompt_mlp.", prompt, spec.mlp_dim)
    c = "prompter.dense_prompt_conv."
    s |= {c + "0.weight": (img // 2, img, 3, 3), c + "0.bias": (img // 2,)}
    s |= {c + f"1.{n}": (img // 2,) for n in ("weight", "bias", "running_mean", "running_var")}
    s |= {c + "1.num_batches_tracked": ()}
    return s | {c + "3.weight": (img, img // 2, 3, 3), c + "3.bias": (img,)}


def official_layout(config) -> dict[str, tuple]:
    """Every key and shape of an official checkpoint's state dict for an RSRefSeg 2 model config."""
    vision = config.sam2.vision
    backbone = vision["backbone_config"]
    hiera = (
        backbone["hidden_size"],
        backbone["num_attention_heads_per_stage"][0],
        tuple(backbone["blocks_per_stage"]),
        (),
        tuple(backbone["window_positional_embedding_background_size"]),
        tuple(backbone["window_size_per_stage"]),
    )
    decoder = config.sam2.mask_decoder
    hidden = vision.get("fpn_hidden_size", 256)
    sam2 = meta_sam2_layout(
        hiera,
        hidden=hidden,
        mlp=decoder.get("mlp_dim", 2048),
        iou_hidden=decoder.get("iou_head_hidden_dim", 256),
        mask_in=config.sam2.prompt_encoder.get("mask_input_channels", 16),
    )
    s = {"backbone.model." + k: v for k, v in sam2.items() if not k.startswith("image_encoder.")}
    encoder = {k.removeprefix("image_encoder."): v for k, v in sam2.items() if k.startswith("image_encoder.")}
    s |= peft_wrapped(encoder, LORA_SAM2, "backbone.model.image_encoder.")
    with torch.device("meta"):  # AutoModel of the SigLIP2 checkpoint: a SiglipModel with the vision head
        siglip = SiglipModel(SiglipConfig(text_config=config.siglip.text, vision_config=config.siglip.vision))
    state = siglip.state_dict()
    part = {
        f"model.{k.removeprefix('vision_model.')}": tuple(v.shape)
        for k, v in state.items()
        if k.startswith("vision_model.")
    }
    s |= peft_wrapped(part, LORA_VISION, "clip_vision_encoder.")
    part = {
        f"model.{k.removeprefix('text_model.')}": tuple(v.shape)
        for k, v in state.items()
        if k.startswith("text_model.")
    }
    part |= {"logit_scale": tuple(state["logit_scale"].shape), "logit_bias": tuple(state["logit_bias"].shape)}
    s |= peft_wrapped(part, LORA_TEXT, "clip_text_encoder.")
    grid = config.siglip.vision["image_size"] // config.siglip.vision["patch_size"]
    text, img = config.siglip.text["hidden_size"], config.siglip.vision["hidden_size"]
    s |= prompter_layout(config.prompter, text=text, img=img, prompt=hidden, grid=grid)
    return s | {f"decode_head.logit_{n}{i}": () for n in ("scale", "bias") for i in (1, 2)}

"""Meta's SAM 2 naming, written down from ``sam2/modeling`` (hieradet.py, image_encoder.py, sam/prompt_encoder.py,
sam/mask_decoder.py, sam/transformer.py, sam2_base.py) independently of the converter under test.

``meta_sam2_layout`` gives every key and shape of Meta's ``SAM2Base`` image path; ``to_meta`` renames a
transformers ``Sam2Model`` state dict into Meta's names by plain substring replacements (the way transformers'
own conversion script works, in reverse), so the tests compare two independent statements of the same facts.
"""

import torch
from transformers import Sam2Config

# Meta's configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml: embed_dim, num_heads, stages, global_att_blocks,
# window_pos_embed_bkg_spatial_size, window_spec
HIERA = {
    "tiny": (96, 1, (1, 2, 7, 2), (5, 7, 9), (7, 7), (8, 4, 14, 7)),
    "small": (96, 1, (1, 2, 11, 2), (7, 10, 13), (7, 7), (8, 4, 14, 7)),
    "base_plus": (112, 2, (2, 3, 16, 3), (12, 16, 20), (14, 14), (8, 4, 14, 7)),
    "large": (144, 2, (2, 6, 36, 4), (23, 33, 43), (7, 7), (8, 4, 16, 8)),
}
# A toy Hiera for CPU tests: embed 8, heads 1, stages, global blocks, background size, windows
TOY = (8, 1, (1, 2, 2, 1), (4,), (4, 4), (4, 2, 2, 2))
TOY_HEAD = {"hidden": 32, "mlp": 64, "heads": 2, "iou_hidden": 24}  # prompt/decoder width of the toy

VIDEO_ONLY = {  # a few keys of each video-only module of SAM2Base (shapes of SAM 2.1 large)
    "memory_attention.layers.0.self_attn.q_proj.weight": (256, 256),
    "memory_attention.norm.weight": (256,),
    "memory_encoder.mask_downsampler.encoder.0.weight": (4, 1, 3, 3),
    "memory_encoder.out_proj.weight": (64, 256, 1, 1),
    "maskmem_tpos_enc": (7, 1, 1, 64),
    "no_mem_pos_enc": (1, 1, 256),
    "no_obj_ptr": (1, 256),
    "no_obj_embed_spatial": (1, 64),
    "obj_ptr_proj.layers.0.weight": (256, 256),
    "obj_ptr_tpos_proj.weight": (64, 256),
    "mask_downsample.weight": (1, 1, 4, 4),
}


def hf_config(hiera, *, hidden=256, mlp=2048, heads=8, iou_hidden=256) -> Sam2Config:
    """transformers' Sam2Config for a Hiera spec (the field names of transformers' conversion script)."""
    embed, num_heads, stages, global_blocks, background, windows = hiera
    dims = [embed * 2**i for i in range(4)]
    return Sam2Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": embed,
                "num_attention_heads": num_heads,
                "embed_dim_per_stage": dims,
                "num_attention_heads_per_stage": [num_heads * 2**i for i in range(4)],
                "blocks_per_stage": list(stages),
                "global_attention_blocks": list(global_blocks),
                "window_positional_embedding_background_size": list(background),
                "window_size_per_stage": list(windows),
            },
            "backbone_channel_list": dims[::-1],
            "fpn_hidden_size": hidden,
        },
        prompt_encoder_config={"hidden_size": hidden},
        mask_decoder_config={
            "hidden_size": hidden,
            "mlp_dim": mlp,
            "num_attention_heads": heads,
            "iou_head_hidden_dim": iou_hidden,
        },
    )


def _linear(prefix, n_out, n_in, bias=True):
    return {prefix + "weight": (n_out, n_in)} | ({prefix + "bias": (n_out,)} if bias else {})


def _norm(prefix, n):
    return {prefix + "weight": (n,), prefix + "bias": (n,)}


def _mlp(prefix, sizes):
    """Meta's MLP: layers.i = Linear(sizes[i], sizes[i+1])."""
    s = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        s |= _linear(f"{prefix}layers.{i}.", n_out, n_in)
    return s


def _attention(prefix, dim, inner):
    s = {}
    for name in ("q_proj", "k_proj", "v_proj"):
        s |= _linear(f"{prefix}{name}.", inner, dim)
    return s | _linear(prefix + "out_proj.", dim, inner)


def meta_sam2_layout(hiera, *, hidden=256, mlp=2048, iou_hidden=256, mask_in=16, n_masks=4) -> dict[str, tuple]:
    """Every key of Meta's SAM2Base image path with its shape (the video-only modules are not listed)."""
    embed, _, stages, _, background, windows = hiera
    t = "image_encoder.trunk."
    s = {
        t + "patch_embed.proj.weight": (embed, 3, 7, 7),
        t + "patch_embed.proj.bias": (embed,),
        t + "pos_embed": (1, embed, *background),
        t + "pos_embed_window": (1, embed, windows[0], windows[0]),
    }
    stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
    dim, block_dims = embed, []
    for i in range(sum(stages)):
        dim_out = dim * 2 if i - 1 in stage_ends else dim
        b = f"{t}blocks.{i}."
        s |= _norm(b + "norm1.", dim) | _linear(b + "attn.qkv.", 3 * dim_out, dim)
        s |= _linear(b + "attn.proj.", dim_out, dim_out) | _norm(b + "norm2.", dim_out)
        s |= _mlp(b + "mlp.", [dim_out, 4 * dim_out, dim_out])
        if dim != dim_out:
            s |= _linear(b + "proj.", dim_out, dim)
        dim = dim_out
        block_dims.append(dim_out)
    channels = [block_dims[e] for e in stage_ends][::-1]
    for i, c in enumerate(channels):
        s |= {
            f"image_encoder.neck.convs.{i}.conv.weight": (hidden, c, 1, 1),
            f"image_encoder.neck.convs.{i}.conv.bias": (hidden,),
        }
    p, q = "sam_prompt_encoder.", mask_in // 4
    s |= {p + "pe_layer.positional_encoding_gaussian_matrix": (2, hidden // 2)}
    s |= {f"{p}point_embeddings.{i}.weight": (1, hidden) for i in range(4)}
    s |= {p + "not_a_point_embed.weight": (1, hidden), p + "no_mask_embed.weight": (1, hidden)}
    s |= {p + "mask_downscaling.0.weight": (q, 1, 2, 2), p + "mask_downscaling.0.bias": (q,)}
    s |= _norm(p + "mask_downscaling.1.", q)
    s |= {p + "mask_downscaling.3.weight": (mask_in, q, 2, 2), p + "mask_downscaling.3.bias": (mask_in,)}
    s |= _norm(p + "mask_downscaling.4.", mask_in)
    s |= {p + "mask_downscaling.6.weight": (hidden, mask_in, 1, 1), p + "mask_downscaling.6.bias": (hidden,)}
    d = "sam_mask_decoder."
    for i in range(2):
        layer = f"{d}transformer.layers.{i}."
        s |= _attention(layer + "self_attn.", hidden, hidden)
        s |= _attention(layer + "cross_attn_token_to_image.", hidden, hidden // 2)
        s |= _attention(layer + "cross_attn_image_to_token.", hidden, hidden // 2)
        s |= _mlp(layer + "mlp.", [hidden, mlp, hidden])
        for n in range(1, 5):
            s |= _norm(f"{layer}norm{n}.", hidden)
    s |= _attention(d + "transformer.final_attn_token_to_image.", hidden, hidden // 2)
    s |= _norm(d + "transformer.norm_final_attn.", hidden)
    s |= {d + "iou_token.weight": (1, hidden), d + "mask_tokens.weight": (n_masks, hidden)}
    s |= {d + "obj_score_token.weight": (1, hidden)}
    s |= {d + "output_upscaling.0.weight": (hidden, hidden // 4, 2, 2), d + "output_upscaling.0.bias": (hidden // 4,)}
    s |= _norm(d + "output_upscaling.1.", hidden // 4)
    s |= {
        d + "output_upscaling.3.weight": (hidden // 4, hidden // 8, 2, 2),
        d + "output_upscaling.3.bias": (hidden // 8,),
    }
    s |= {d + "conv_s0.weight": (hidden // 8, hidden, 1, 1), d + "conv_s0.bias": (hidden // 8,)}
    s |= {d + "conv_s1.weight": (hidden // 4, hidden, 1, 1), d + "conv_s1.bias": (hidden // 4,)}
    for i in range(n_masks):
        s |= _mlp(f"{d}output_hypernetworks_mlps.{i}.", [hidden, hidden, hidden, hidden // 8])
    s |= _mlp(d + "iou_prediction_head.", [hidden, iou_hidden, iou_hidden, n_masks])
    s |= _mlp(d + "pred_obj_score_head.", [hidden, hidden, hidden, 1])
    return s | {"no_mem_embed": (1, 1, hidden)}


_REPLACEMENTS = [  # transformers -> Meta, applied in order
    ("vision_encoder.backbone.", "image_encoder.trunk."),
    ("vision_encoder.neck.", "image_encoder.neck."),
    ("patch_embed.projection.", "patch_embed.proj."),
    ("prompt_encoder.", "sam_prompt_encoder."),
    ("mask_decoder.", "sam_mask_decoder."),
    ("shared_image_embedding.positional_embedding", "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    ("mask_embed.conv1.", "mask_downscaling.0."),
    ("mask_embed.layer_norm1.", "mask_downscaling.1."),
    ("mask_embed.conv2.", "mask_downscaling.3."),
    ("mask_embed.layer_norm2.", "mask_downscaling.4."),
    ("mask_embed.conv3.", "mask_downscaling.6."),
    ("upscale_conv1.", "output_upscaling.0."),
    ("upscale_layer_norm.", "output_upscaling.1."),
    ("upscale_conv2.", "output_upscaling.3."),
    ("layer_norm", "norm"),
    (".o_proj.", ".out_proj."),
    ("no_memory_embedding", "no_mem_embed"),
]


def to_meta(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers Sam2Model state dict in Meta's names (values shared, point table split into rows)."""
    out = {}
    for key, value in hf_state.items():
        if key == "prompt_encoder.shared_embedding.positional_embedding":
            continue  # transformers' second copy of the Fourier matrix
        if key == "prompt_encoder.point_embed.weight":
            out |= {f"sam_prompt_encoder.point_embeddings.{i}.weight": row for i, row in enumerate(value.split(1))}
            continue
        for old, new in _REPLACEMENTS:
            key = key.replace(old, new)
        if ".neck.convs." in key:
            head, tail = key.rsplit(".", 1)
            key = f"{head}.conv.{tail}"
        if ".mlp.proj_in." in key or ".mlp.proj_out." in key:  # two-layer MLPs (Hiera blocks, decoder transformer)
            key = key.replace(".mlp.proj_in.", ".mlp.layers.0.").replace(".mlp.proj_out.", ".mlp.layers.1.")
        elif any(h in key for h in ("output_hypernetworks_mlps", "iou_prediction_head", "pred_obj_score_head")):
            key = key.replace(".layers.0.", ".layers.1.").replace(".proj_in.", ".layers.0.")
            key = key.replace(".proj_out.", ".layers.2.")
        out[key] = value
    return out

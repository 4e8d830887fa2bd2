"""Meta segment-anything checkpoints -> transformers SamModel.

``meta_sam_layout`` writes down the key names and shapes of Meta's ``Sam`` module (image_encoder / prompt_encoder /
mask_decoder as segment-anything's ``modeling/`` defines them), independently of the converter.
"""

import pytest
import torch
from transformers import SamConfig, SamModel

from rsrs.model import get_model_config
from rsrs.model.rsrefseg.sam import build_sam
from rsrs.model.rsrefseg.sam_convert import hf_to_meta, meta_to_hf

VIT = {  # Meta's build_sam_vit_{b,l,h}: embed dim, depth, heads, global attention blocks
    "b": (768, 12, 12, (2, 5, 8, 11)),
    "l": (1024, 24, 16, (5, 11, 17, 23)),
    "h": (1280, 32, 16, (7, 15, 23, 31)),
}


def meta_sam_layout(
    *,
    dim,
    depth,
    heads,
    global_blocks,
    img=1024,
    patch=16,
    window=14,
    out=256,
    pd=256,
    mask_in=16,
    dec_mlp=2048,
    dec_depth=2,
    iou_hidden=256,
    n_masks=4,
) -> dict[str, tuple]:
    g = img // patch
    s = {
        "image_encoder.pos_embed": (1, g, g, dim),
        "image_encoder.patch_embed.proj.weight": (dim, 3, patch, patch),
        "image_encoder.patch_embed.proj.bias": (dim,),
    }
    for i in range(depth):
        b, size = f"image_encoder.blocks.{i}.", g if i in global_blocks else window
        s |= {
            b + "norm1.weight": (dim,),
            b + "norm1.bias": (dim,),
            b + "norm2.weight": (dim,),
            b + "norm2.bias": (dim,),
            b + "attn.qkv.weight": (3 * dim, dim),
            b + "attn.qkv.bias": (3 * dim,),
            b + "attn.proj.weight": (dim, dim),
            b + "attn.proj.bias": (dim,),
            b + "attn.rel_pos_h": (2 * size - 1, dim // heads),
            b + "attn.rel_pos_w": (2 * size - 1, dim // heads),
            b + "mlp.lin1.weight": (4 * dim, dim),
            b + "mlp.lin1.bias": (4 * dim,),
            b + "mlp.lin2.weight": (dim, 4 * dim),
            b + "mlp.lin2.bias": (dim,),
        }
    s |= {
        "image_encoder.neck.0.weight": (out, dim, 1, 1),
        "image_encoder.neck.1.weight": (out,),
        "image_encoder.neck.1.bias": (out,),
        "image_encoder.neck.2.weight": (out, out, 3, 3),
        "image_encoder.neck.3.weight": (out,),
        "image_encoder.neck.3.bias": (out,),
    }
    p = "prompt_encoder."
    s |= {
        p + "pe_layer.positional_encoding_gaussian_matrix": (2, pd // 2),
        p + "not_a_point_embed.weight": (1, pd),
        p + "no_mask_embed.weight": (1, pd),
    }
    s |= {f"{p}point_embeddings.{i}.weight": (1, pd) for i in range(4)}
    q = mask_in // 4
    s |= {
        p + "mask_downscaling.0.weight": (q, 1, 2, 2),
        p + "mask_downscaling.0.bias": (q,),
        p + "mask_downscaling.1.weight": (q,),
        p + "mask_downscaling.1.bias": (q,),
        p + "mask_downscaling.3.weight": (mask_in, q, 2, 2),
        p + "mask_downscaling.3.bias": (mask_in,),
        p + "mask_downscaling.4.weight": (mask_in,),
        p + "mask_downscaling.4.bias": (mask_in,),
        p + "mask_downscaling.6.weight": (pd, mask_in, 1, 1),
        p + "mask_downscaling.6.bias": (pd,),
    }

    def attention(prefix, inner):
        return {
            prefix + "q_proj.weight": (inner, pd),
            prefix + "q_proj.bias": (inner,),
            prefix + "k_proj.weight": (inner, pd),
            prefix + "k_proj.bias": (inner,),
            prefix + "v_proj.weight": (inner, pd),
            prefix + "v_proj.bias": (inner,),
            prefix + "out_proj.weight": (pd, inner),
            prefix + "out_proj.bias": (pd,),
        }

    def norm(prefix):
        return {prefix + "weight": (pd,), prefix + "bias": (pd,)}

    d = "mask_decoder."
    for i in range(dec_depth):
        layer = f"{d}transformer.layers.{i}."
        s |= attention(layer + "self_attn.", pd) | attention(layer + "cross_attn_token_to_image.", pd // 2)
        s |= attention(layer + "cross_attn_image_to_token.", pd // 2)
        s |= norm(layer + "norm1.") | norm(layer + "norm2.") | norm(layer + "norm3.") | norm(layer + "norm4.")
        s |= {
            layer + "mlp.lin1.weight": (dec_mlp, pd),
            layer + "mlp.lin1.bias": (dec_mlp,),
            layer + "mlp.lin2.weight": (pd, dec_mlp),
            layer + "mlp.lin2.bias": (pd,),
        }
    s |= attention(d + "transformer.final_attn_token_to_image.", pd // 2) | norm(d + "transformer.norm_final_attn.")
    s |= {
        d + "iou_token.weight": (1, pd),
        d + "mask_tokens.weight": (n_masks, pd),
        d + "output_upscaling.0.weight": (pd, pd // 4, 2, 2),
        d + "output_upscaling.0.bias": (pd // 4,),
        d + "output_upscaling.1.weight": (pd // 4,),
        d + "output_upscaling.1.bias": (pd // 4,),
        d + "output_upscaling.3.weight": (pd // 4, pd // 8, 2, 2),
        d + "output_upscaling.3.bias": (pd // 8,),
    }
    for i in range(n_masks):
        mlp = f"{d}output_hypernetworks_mlps.{i}.layers."
        s |= {
            mlp + "0.weight": (pd, pd),
            mlp + "0.bias": (pd,),
            mlp + "1.weight": (pd, pd),
            mlp + "1.bias": (pd,),
            mlp + "2.weight": (pd // 8, pd),
            mlp + "2.bias": (pd // 8,),
        }
    h = d + "iou_prediction_head.layers."
    s |= {
        h + "0.weight": (iou_hidden, pd),
        h + "0.bias": (iou_hidden,),
        h + "1.weight": (iou_hidden, iou_hidden),
        h + "1.bias": (iou_hidden,),
        h + "2.weight": (n_masks, iou_hidden),
        h + "2.bias": (n_masks,),
    }
    return s


def _random_state(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in layout.items()}


def _tiny_layout():
    v = get_model_config("tiny").sam
    return meta_sam_layout(
        dim=v.vision["hidden_size"],
        depth=v.vision["num_hidden_layers"],
        heads=v.vision["num_attention_heads"],
        global_blocks=tuple(v.vision["global_attn_indexes"]),
        img=v.vision["image_size"],
        patch=16,
        window=v.vision["window_size"],
        out=v.vision["output_channels"],
        pd=v.prompt_encoder["hidden_size"],
        dec_mlp=v.mask_decoder["mlp_dim"],
        iou_hidden=v.mask_decoder["iou_head_hidden_dim"],
    )


@pytest.mark.parametrize("size", ["b", "l", "h"])
def test_every_meta_key_maps_and_shapes_agree_at_real_size(size):
    dim, depth, heads, global_blocks = VIT[size]
    layout = meta_sam_layout(dim=dim, depth=depth, heads=heads, global_blocks=global_blocks)
    meta = {k: torch.empty(shape, device="meta") for k, shape in layout.items()}
    config = SamConfig(
        vision_config=dict(
            hidden_size=dim,
            num_hidden_layers=depth,
            num_attention_heads=heads,
            global_attn_indexes=list(global_blocks),
        )
    )
    with torch.device("meta"):
        hf = SamModel(config).state_dict()
    converted = meta_to_hf(meta)
    assert converted.keys() == hf.keys()
    for key, tensor in converted.items():
        assert tensor.shape == hf[key].shape, key


def test_round_trip_meta_hf_meta_is_exact():
    meta = _random_state(_tiny_layout())
    back = hf_to_meta(meta_to_hf(meta))
    assert back.keys() == meta.keys()
    assert all(torch.equal(back[k], meta[k]) for k in meta)


def test_meta_checkpoint_file_loads_into_the_model(tmp_path):
    meta = _random_state(_tiny_layout(), seed=3)
    meta["pixel_mean"] = torch.zeros(3, 1, 1)  # some re-saved files carry the non-persistent buffers
    path = tmp_path / "sam_vit_tiny.pth"
    torch.save(meta, path)
    spec = get_model_config("tiny").sam.model_copy(update={"pretrained": str(path)})
    sam = build_sam(spec, pretrained=True, weights_root=None)
    state = sam.state_dict()
    assert torch.equal(state["vision_encoder.layers.1.attn.rel_pos_h"], meta["image_encoder.blocks.1.attn.rel_pos_h"])
    assert torch.equal(
        state["mask_decoder.iou_prediction_head.proj_out.weight"],
        meta["mask_decoder.iou_prediction_head.layers.2.weight"],
    )
    assert torch.equal(
        state["prompt_encoder.shared_embedding.positional_embedding"],
        meta["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"],
    )
    converted_back = hf_to_meta(state)
    assert all(torch.equal(converted_back[k], meta[k]) for k in meta if k != "pixel_mean")


def test_meta_checkpoint_of_the_wrong_size_is_refused(tmp_path):
    from rsrs.core.errors import CheckpointError

    path = tmp_path / "sam_vit_b.pth"
    layout = meta_sam_layout(
        dim=64,
        depth=2,
        heads=2,
        global_blocks=(1,),
        img=256,
        window=8,
        out=32,
        pd=32,
        dec_mlp=64,
        iou_hidden=32,
    )
    torch.save(_random_state(layout), path)
    spec = get_model_config("tiny").sam.model_copy(update={"pretrained": str(path)})
    with pytest.raises(CheckpointError, match="does not fit"):
        build_sam(spec, pretrained=True, weights_root=None)

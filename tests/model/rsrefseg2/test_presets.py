"""Real-size RSRefSeg 2 presets built at random init on the meta device: architecture, names and parameter counts.

References: SAM 2.1 Hiera-T/S/B+/L 38.9/46.0/80.8/224.4 M parameters in Meta's release, of which about 7.5 M are
video-memory modules RSRefSeg 2 does not build; SigLIP2 so400m/16 with its 256k vocabulary about 1,137 M; a
third-party table gives 1,447 M for the whole official RSRefSeg 2 model.
"""

import pytest
import torch

from rsrs.model import TextFeatures, list_models, load_model

# preset: (SAM 2 without memory modules, SigLIP2, trainable, total incl. LoRA)
EXPECTED = {
    "rsrefseg2-t": (31_440_721, 1_136_555_698, 95_686_101, 1_259_460_933),
    "rsrefseg2-s": (38_538_577, 1_136_555_698, 95_833_557, 1_266_706_245),
    "rsrefseg2-b+": (73_328_401, 1_136_555_698, 96_268_757, 1_301_931_269),
    "rsrefseg2-l": (216_924_865, 1_136_555_698, 97_867_221, 1_447_126_197),
}
PROMPTER = 82_773_312

# The official configuration's operation orders (configs_RSRefSeg2/rrsisd_training.py).
QUERY_OPS = ["self_attn_query_query1", "norm_query1_1", "self_attn_query_query2", "norm_query2_1",
             "cross_attn_query_text_query1_text", "norm_query1_2", "mlp_query1_2", "norm_query1_3",
             "cross_attn_query_text_query2_text", "norm_query2_2", "mlp_query2_2", "norm_query2_3",
             "cross_attn_query_query_query1_query2", "norm_query1_4", "mlp_query1_3", "norm_query1_5",
             "cross_attn_query_query_query2_query1", "norm_query2_4", "mlp_query2_3", "norm_query2_5"]  # fmt: skip
IMAGE_OPS = ["self_attn_text_text_1", "norm_text_1", "cross_attn_img_text_1", "norm_img_1", "mlp_img_1", "norm_img_2"]
PROMPT_OPS = ["self_attn_text_1", "norm_text_1", "cross_attn_img_text_1", "norm_img_1", "mlp_img_1", "norm_img_2",
              "self_attn_prompt_1", "norm_prompt_1", "cross_attn_prompt_text_1", "norm_prompt_2", "mlp_prompt_2",
              "norm_prompt_3", "cross_attn_prompt_img_1", "norm_prompt_4", "mlp_prompt_3",
              "norm_prompt_5"]  # fmt: skip


def _base(module) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if ".lora_" not in n)


def _official_prompter_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of the official ``prompter.`` parameters, from its module definitions: Attention(q_dim,
    kv_dim) = q/k/v_proj (q_dim|kv_dim -> 512), out_proj (512 -> q_dim); MLP(d) = layers.0 (d -> 512), layers.1
    (512 -> d); LayerNorm(d); text/image width 1152, prompt width 256, 3 queries, 9 prompts, 32 x 32 image grid."""
    shapes = {"text_query_pe_embedding1": (3, 1152), "text_query_pe_embedding2": (3, 1152),
              "img_pe": (1, 1152, 32, 32), "prompt_pe_embedding": (9, 256), "prompt_embedding": (9, 256)}  # fmt: skip
    width = {"query1": 1152, "query2": 1152, "text": 1152, "img": 1152, "prompt": 256}

    def stream(op: str, after: str) -> str:
        return next(s for s in ("query1", "query2", "prompt", "text", "img") if op[len(after) :].startswith(s))

    def add(prefix: str, op: str) -> None:
        if op.startswith("norm_"):
            d = width[stream(op, "norm_")]
            shapes.update({f"{prefix}.weight": (d,), f"{prefix}.bias": (d,)})
        elif op.startswith("mlp_"):
            d = width[stream(op, "mlp_")]
            shapes.update({f"{prefix}.layers.0.weight": (512, d), f"{prefix}.layers.0.bias": (512,),
                           f"{prefix}.layers.1.weight": (d, 512), f"{prefix}.layers.1.bias": (d,)})  # fmt: skip
        else:
            q = 256 if "prompt" in op else 1152
            kv = 256 if op.startswith("self_attn_prompt") else 1152
            shapes.update({f"{prefix}.q_proj.weight": (512, q), f"{prefix}.k_proj.weight": (512, kv),
                           f"{prefix}.v_proj.weight": (512, kv), f"{prefix}.out_proj.weight": (q, 512),
                           f"{prefix}.out_proj.bias": (q,)})  # fmt: skip
            shapes.update({f"{prefix}.{p}_proj.bias": (512,) for p in "qkv"})

    for layers, ops in [("two_queries_text_attn_layers", QUERY_OPS), ("queries1_to_img_attn_layers", IMAGE_OPS),
                        ("prompt_queries2_img_attn_layers", PROMPT_OPS)]:  # fmt: skip
        for i in range(2):
            for op in ops:
                add(f"{layers}.{i}.{op}", op)
    shapes.update({"sparse_prompt_mlp.layers.0.weight": (512, 256), "sparse_prompt_mlp.layers.0.bias": (512,),
                   "sparse_prompt_mlp.layers.1.weight": (256, 512), "sparse_prompt_mlp.layers.1.bias": (256,),
                   "dense_prompt_conv.0.weight": (576, 1152, 3, 3), "dense_prompt_conv.0.bias": (576,),
                   "dense_prompt_conv.1.weight": (576,), "dense_prompt_conv.1.bias": (576,),
                   "dense_prompt_conv.3.weight": (1152, 576, 3, 3), "dense_prompt_conv.3.bias": (1152,)})  # fmt: skip
    return shapes


@pytest.fixture(scope="module")
def large():
    return load_model("rsrefseg2-l", device="meta")


def test_presets_listed():
    assert {"tiny2", "rsrefseg2-t", "rsrefseg2-s", "rsrefseg2-b+", "rsrefseg2-l"} <= set(list_models())


def test_large_preset_has_the_published_sizes_and_the_official_prompter_names(large):
    sam2, siglip, trainable, total = EXPECTED["rsrefseg2-l"]
    assert _base(large.sam2) == sam2 and _base(large.siglip) == siglip and _base(large.prompter) == PROMPTER
    assert sum(p.numel() for p in large.parameters() if p.requires_grad) == trainable
    assert sum(p.numel() for p in large.parameters()) == total
    assert {n: tuple(p.shape) for n, p in large.prompter.named_parameters()} == _official_prompter_shapes()
    assert {n: tuple(p.shape) for n, p in large.decode_head.named_parameters()} == {"logit_scale2": (),
                                                                                     "logit_bias2": ()}  # fmt: skip
    assert large.siglip.text_model.embeddings.token_embedding.weight.shape == (256_000, 1152)
    assert large.sam2.no_memory_embedding.shape == (1, 1, 256)


def test_large_preset_feature_shapes_on_the_meta_device(large):
    """Hiera-L's 64 x 64 x 256 embedding with its 128 and 256 high-resolution maps, SigLIP2's 32 x 32 grid, and
    masks at the tile's size."""
    feats = large.encode_images(torch.zeros(1, 3, 1024, 1024, dtype=torch.uint8, device="meta"))
    assert feats.sam.shape == (1, 256, 64, 64)
    assert feats.sam_s1.shape == (1, 64, 128, 128) and feats.sam_s0.shape == (1, 32, 256, 256)
    assert feats.siglip.shape == (1, 32 * 32, 1152) and feats.grid == (32, 32)
    text = TextFeatures(  # the text encoder's padding check reads values, which the meta device has not
        tokens=torch.zeros(2, 7, 1152, device="meta"), valid=torch.ones(2, 7, dtype=torch.bool, device="meta"),
        pooled=torch.zeros(2, 1152, device="meta"), texts=["a", "b"],
    )  # fmt: skip
    out = large.decode(feats, text)
    assert out.logits.shape == (1, 2, 1024, 1024) and out.activation.shape == (1, 2, 256, 256)


@pytest.mark.parametrize("preset", ["rsrefseg2-t", "rsrefseg2-s", "rsrefseg2-b+"])
def test_smaller_presets_have_the_published_sizes(preset):
    model = load_model(preset, device="meta")
    sam2, siglip, trainable, total = EXPECTED[preset]
    assert _base(model.sam2) == sam2 and _base(model.siglip) == siglip and _base(model.prompter) == PROMPTER
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    assert sum(p.numel() for p in model.parameters()) == total

"""The cascaded prompter against direct computations written from the official order of operations."""

import math

import pytest
import torch
import torch.nn.functional as F

from rsrs.core.errors import ConfigError
from rsrs.model.rsrefseg2.blocks import OperationBlock, parse_operation
from rsrs.model.rsrefseg2.config import PROMPT_OPERATIONS, QUERY_OPERATIONS
from rsrs.model.rsrefseg2.prompter import CascadedPrompter, upsampled_cosine

HEADS = 2


def _attention(m, q, k, v):
    """Official ``Attention``: project, split heads, softmax(q k^T / sqrt(d)) v, merge, project out."""
    q = F.linear(q, m.q_proj.weight, m.q_proj.bias)
    k = F.linear(k, m.k_proj.weight, m.k_proj.bias)
    v = F.linear(v, m.v_proj.weight, m.v_proj.bias)
    B, Nq, width = q.shape
    d = width // HEADS
    q, k, v = (x.reshape(B, x.shape[1], HEADS, d).permute(0, 2, 1, 3) for x in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    out = (weights @ v).permute(0, 2, 1, 3).reshape(B, Nq, width)
    return F.linear(out, m.out_proj.weight, m.out_proj.bias)


def _norm(m, x):
    return F.layer_norm(x, x.shape[-1:], m.weight, m.bias, eps=1e-5)


def _mlp(m, x):
    return F.linear(F.gelu(F.linear(x, m.layers[0].weight, m.layers[0].bias)), m.layers[1].weight, m.layers[1].bias)


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_prompt_block_equals_the_official_order_of_operations():
    torch.manual_seed(0)
    block = OperationBlock(
        PROMPT_OPERATIONS, dims={"prompt": 4, "img": 6, "text": 6}, num_heads=HEADS, mlp_dim=5, internal_dim=8
    ).eval()
    p, img, t = _randn(2, 3, 4, seed=1), _randn(2, 5, 6, seed=2), _randn(2, 4, 6, seed=3)
    ppe, ipe, tpe = _randn(2, 3, 4, seed=4), _randn(1, 5, 6, seed=5), _randn(2, 4, 6, seed=6)
    with torch.no_grad():
        out = block({"prompt": p, "img": img, "text": t}, {"prompt": ppe, "img": ipe, "text": tpe})
        m = dict(block.named_children())
        # text self-attention (q = k = text + pe), then the image attends to the text
        t = _norm(m["norm_text_1"], t + _attention(m["self_attn_text_1"], t + tpe, t + tpe, t))
        img = _norm(m["norm_img_1"], img + _attention(m["cross_attn_img_text_1"], img + ipe, t + tpe, t))
        img = _norm(m["norm_img_2"], img + _mlp(m["mlp_img_1"], img))
        # prompts: self-attention, then attend to the text, then to the (refined) image
        p = _norm(m["norm_prompt_1"], p + _attention(m["self_attn_prompt_1"], p + ppe, p + ppe, p))
        p = _norm(m["norm_prompt_2"], p + _attention(m["cross_attn_prompt_text_1"], p + ppe, t + tpe, t))
        p = _norm(m["norm_prompt_3"], p + _mlp(m["mlp_prompt_2"], p))
        p = _norm(m["norm_prompt_4"], p + _attention(m["cross_attn_prompt_img_1"], p + ppe, img + ipe, img))
        p = _norm(m["norm_prompt_5"], p + _mlp(m["mlp_prompt_3"], p))
    torch.testing.assert_close(out["text"], t)
    torch.testing.assert_close(out["img"], img)
    torch.testing.assert_close(out["prompt"], p)


def test_two_query_block_equals_the_official_order_of_operations():
    """Each query set attends to itself, to the text (no positional embedding on the text), then to the other set;
    set 2 attends to set 1 as already updated by this block."""
    torch.manual_seed(0)
    block = OperationBlock(
        QUERY_OPERATIONS, dims={"query1": 6, "query2": 6, "text": 6}, num_heads=HEADS, mlp_dim=5, internal_dim=4
    ).eval()
    q1, q2, t = _randn(2, 3, 6, seed=1), _randn(2, 3, 6, seed=2), _randn(2, 7, 6, seed=3)
    pe1, pe2 = _randn(2, 3, 6, seed=4), _randn(2, 3, 6, seed=5)
    with torch.no_grad():
        out = block({"query1": q1, "query2": q2, "text": t}, {"query1": pe1, "query2": pe2})
        m = dict(block.named_children())
        q1 = _norm(m["norm_query1_1"], q1 + _attention(m["self_attn_query_query1"], q1 + pe1, q1 + pe1, q1))
        q2 = _norm(m["norm_query2_1"], q2 + _attention(m["self_attn_query_query2"], q2 + pe2, q2 + pe2, q2))
        q1 = _norm(m["norm_query1_2"], q1 + _attention(m["cross_attn_query_text_query1_text"], q1 + pe1, t, t))
        q1 = _norm(m["norm_query1_3"], q1 + _mlp(m["mlp_query1_2"], q1))
        q2 = _norm(m["norm_query2_2"], q2 + _attention(m["cross_attn_query_text_query2_text"], q2 + pe2, t, t))
        q2 = _norm(m["norm_query2_3"], q2 + _mlp(m["mlp_query2_2"], q2))
        attend = m["cross_attn_query_query_query1_query2"]
        q1 = _norm(m["norm_query1_4"], q1 + _attention(attend, q1 + pe1, q2 + pe2, q2))
        q1 = _norm(m["norm_query1_5"], q1 + _mlp(m["mlp_query1_3"], q1))
        attend = m["cross_attn_query_query_query2_query1"]
        q2 = _norm(m["norm_query2_4"], q2 + _attention(attend, q2 + pe2, q1 + pe1, q1))
        q2 = _norm(m["norm_query2_5"], q2 + _mlp(m["mlp_query2_3"], q2))
    torch.testing.assert_close(out["query1"], q1)
    torch.testing.assert_close(out["query2"], q2)
    torch.testing.assert_close(out["text"], t)


def _prompter(depth: int) -> CascadedPrompter:
    torch.manual_seed(0)
    return CascadedPrompter(
        text_dim=6, image_dim=6, prompt_dim=4, image_grid=4, num_queries=3, num_prompts=5, num_heads=HEADS,
        mlp_dim=5, internal_dim=4, query_operations=QUERY_OPERATIONS, image_operations=["norm_img_1"],
        prompt_operations=PROMPT_OPERATIONS, query_depth=depth, image_depth=depth, prompt_depth=depth,
    ).eval()  # fmt: skip


def test_without_blocks_the_prompter_pools_the_text_and_prompts_from_its_learned_embeddings():
    """Queries start as the text token states averaged over ``num_queries`` equal spans; the sparse prompts are the
    MLP of the learned prompt embeddings; the dense prompt is computed from the patch map as it came in."""
    prompter = _prompter(depth=0)
    patches, tokens, pooled = _randn(2, 16, 6, seed=1), _randn(2, 6, 6, seed=2), _randn(2, 6, seed=3)
    scale, bias = torch.tensor([2.0]), torch.tensor([-1.0])
    with torch.no_grad():
        out = prompter(patches, tokens, pooled, grid=(4, 4), mask_size=(8, 8), logit_scale=scale, logit_bias=bias)
        refined = patches.transpose(1, 2).reshape(2, 6, 4, 4)
        dense = prompter.dense_logits(refined, pooled, mask_size=(8, 8), logit_scale=scale, logit_bias=bias)
    spans = torch.stack([tokens[:, 0:2].mean(1), tokens[:, 2:4].mean(1), tokens[:, 4:6].mean(1)], dim=1)
    torch.testing.assert_close(out.queries1, spans)
    torch.testing.assert_close(out.queries2, spans)
    sparse = _mlp(prompter.sparse_prompt_mlp, prompter.prompt_embedding)
    torch.testing.assert_close(out.sparse, sparse.expand(2, -1, -1))
    torch.testing.assert_close(out.dense, dense)


def test_dense_prompt_is_the_siglip_logit_of_the_upsampled_conv_map_against_the_pooled_text():
    prompter = _prompter(depth=1)
    conv = prompter.dense_prompt_conv
    with torch.no_grad():
        conv[1].running_mean.copy_(_randn(3, seed=9))  # eval-mode BatchNorm uses the running statistics
        conv[1].running_var.copy_(_randn(3, seed=10).abs() + 0.5)
        refined, pooled = _randn(2, 6, 4, 4, seed=1), _randn(2, 6, seed=2)
        scale, bias = torch.tensor([1.5]), torch.tensor([0.25])
        out = prompter.dense_logits(refined, pooled, mask_size=(7, 7), logit_scale=scale, logit_bias=bias)
        bn = conv[1]
        x = F.conv2d(refined, conv[0].weight, conv[0].bias, padding=1)
        x = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        x = F.gelu(x * bn.weight[:, None, None] + bn.bias[:, None, None])
        x = F.conv2d(x, conv[3].weight, conv[3].bias, padding=1)
        x = F.interpolate(x, size=(7, 7), mode="bilinear", align_corners=True)
        cos = (x * pooled[:, :, None, None]).sum(1) / (x.norm(dim=1) * pooled.norm(dim=1)[:, None, None])
        expected = (cos * math.exp(1.5) + 0.25)[:, None]
    assert out.shape == (2, 1, 7, 7)
    torch.testing.assert_close(out, expected)


def test_learned_image_position_embedding_follows_a_different_patch_grid():
    prompter = _prompter(depth=1)
    with torch.no_grad():
        same = prompter.image_positional_embedding((4, 4))
        other = prompter.image_positional_embedding((6, 6))
    torch.testing.assert_close(same, prompter.img_pe.flatten(2).transpose(1, 2))
    assert other.shape == (1, 36, 6)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cross_attn_query_query_query2_query1", ("cross_attn", "query2", "query1")),
        ("self_attn_text_text_1", ("self_attn", "text", "text")),
        ("cross_attn_img_text_1", ("cross_attn", "img", "text")),
        ("cross_attn_prompt_img_1", ("cross_attn", "prompt", "img")),
        ("mlp_query1_3", ("mlp", "query1", "query1")),
        ("norm_prompt_5", ("norm", "prompt", "prompt")),
    ],
)
def test_operation_names_read_as_the_official_code_reads_them(name, expected):
    op = parse_operation(name)
    assert (op.kind, op.target, op.source) == expected and op.name == name


def test_unknown_or_repeated_operations_are_config_errors():
    with pytest.raises(ConfigError, match="unknown prompter operation 'attend_everything'"):
        parse_operation("attend_everything")
    with pytest.raises(ConfigError, match="must not repeat"):
        OperationBlock(["norm_img_1", "norm_img_1"], dims={"img": 4}, num_heads=2, mlp_dim=4, internal_dim=4)


@pytest.mark.parametrize(
    ("shape", "size"),
    [((3, 8, 5, 7), (16, 16)), ((2, 16, 32, 32), (256, 256)), ((2, 4, 1, 3), (4, 9)), ((1, 3, 2, 2), (1, 1))],
)
def test_dense_cosine_equals_the_cosine_of_the_upsampled_channels(shape, size):
    """The dense prompt's cosine, computed without upsampling the channels, equals upsampling them (float64)."""
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    t = torch.randn(shape[:2], dtype=torch.float64, generator=g)
    up = F.interpolate(x, size=size, mode="bilinear", align_corners=True)  # P x C x m x m: the direct way
    direct = torch.einsum("pchw,pc->phw", F.normalize(up, dim=1), F.normalize(t, dim=1))
    torch.testing.assert_close(upsampled_cosine(x, t, size=size).double(), direct, rtol=0, atol=1e-5)

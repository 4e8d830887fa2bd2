import torch
import torch.nn.functional as F

from rsrs.model.rsrefseg.prompter import AttnPrompter, text_activated_features


def _direct_eq34(v, t_global, t_local, valid, scale, bias):
    """Eq. 3-4 written element by element, for one pair: v N x C, t_global C, t_local L x C."""
    N, C = v.shape

    def a(x, y):
        return torch.dot(x, y) / (x.norm() * y.norm()) * scale.exp() + bias

    v_global = torch.stack([v[i] * torch.sigmoid(a(v[i], t_global)) + v[i] for i in range(N)])
    real = [j for j in range(t_local.shape[0]) if valid[j]]
    v_local = torch.stack(
        [torch.stack([v[i] * torch.sigmoid(a(v[i], t_local[j])) for j in real]).mean(0) + v[i] for i in range(N)]
    )
    return torch.cat([v_global, v_local, v], dim=-1)


def test_text_activated_features_equal_direct_eq_3_4():
    g = torch.Generator().manual_seed(0)
    P, N, L, C = 2, 6, 5, 4
    v = torch.randn(P, N, C, generator=g, dtype=torch.float64)
    pooled = torch.randn(P, C, generator=g, dtype=torch.float64)
    tokens = torch.randn(P, L, C, generator=g, dtype=torch.float64)
    valid = torch.tensor([[True, True, True, False, False], [True, True, True, True, True]])
    scale, bias = torch.tensor([1.3], dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64)

    feats, logits = text_activated_features(v, pooled, tokens, valid, logit_scale=scale, logit_bias=bias)

    assert feats.shape == (P, N, 3 * C)
    for p in range(P):
        expected = _direct_eq34(v[p], pooled[p], tokens[p], valid[p], scale, bias)
        torch.testing.assert_close(feats[p], expected)
        cos = F.cosine_similarity(v[p], pooled[p][None], dim=-1)
        torch.testing.assert_close(logits[p], cos * scale.exp() + bias)


def test_padding_tokens_do_not_change_local_features():
    g = torch.Generator().manual_seed(1)
    v, pooled = torch.randn(1, 4, 3, generator=g), torch.randn(1, 3, generator=g)
    tokens = torch.randn(1, 4, 3, generator=g)
    valid = torch.tensor([[True, True, False, False]])
    scale, bias = torch.zeros(1), torch.zeros(1)
    a, _ = text_activated_features(v, pooled, tokens, valid, logit_scale=scale, logit_bias=bias)
    tokens2 = tokens.clone()
    tokens2[0, 2:] = torch.randn(2, 3, generator=g) * 100
    b, _ = text_activated_features(v, pooled, tokens2, valid, logit_scale=scale, logit_bias=bias)
    torch.testing.assert_close(a, b)


def test_prompter_gives_49_sparse_tokens_from_a_27x27_grid_at_batch_size_1():
    C, D = 16, 32
    prompter = AttnPrompter(feature_dim=C, prompt_dim=D, norm_groups=8).eval()
    g = torch.Generator().manual_seed(2)
    out = prompter(
        torch.randn(1, 27 * 27, C, generator=g),
        torch.randn(1, C, generator=g),
        torch.randn(1, 7, C, generator=g),
        torch.ones(1, 7, dtype=torch.bool),
        grid=(27, 27),
        positional=torch.randn(D, 27, 27, generator=g),
        logit_scale=torch.zeros(1),
        logit_bias=torch.zeros(1),
    )
    assert out.sparse.shape == (1, 49, D)
    assert out.activation.shape == (1, 27, 27)
    assert torch.isfinite(out.sparse).all()


def _prompter_inputs(pooled: torch.Tensor, *, C: int, D: int, seed: int = 3) -> dict:
    """Random patch tokens on a 27x27 grid for the given pooled queries (P x C)."""
    g = torch.Generator().manual_seed(seed)
    P = len(pooled)
    return dict(
        patches=torch.randn(P, 27 * 27, C, generator=g),
        pooled=pooled,
        tokens=torch.randn(P, 5, C, generator=g),
        valid=torch.ones(P, 5, dtype=torch.bool),
        grid=(27, 27),
        positional=torch.randn(D, 27, 27, generator=g),
        logit_scale=torch.zeros(1),
        logit_bias=torch.zeros(1),
    )


def test_a_new_position_map_leaves_a_trained_prompter_unchanged():
    C, D = 16, 32
    paper = AttnPrompter(feature_dim=C, prompt_dim=D, norm_groups=8).eval()
    mapped = AttnPrompter(feature_dim=C, prompt_dim=D, norm_groups=8, position_grid=7).eval()
    missing, unexpected = mapped.load_state_dict(paper.state_dict(), strict=False)
    assert sorted(missing) == ["position.bias", "position.weight"] and not unexpected
    inputs = _prompter_inputs(torch.randn(2, C, generator=torch.Generator().manual_seed(4)), C=C, D=D)
    with torch.no_grad():
        a, b = paper(**inputs), mapped(**inputs)
    torch.testing.assert_close(b.sparse, a.sparse)
    torch.testing.assert_close(b.activation, a.activation)


def test_each_query_raises_the_activation_where_its_position_map_points():
    C, D = 16, 32
    paper = AttnPrompter(feature_dim=C, prompt_dim=D, norm_groups=8).eval()
    mapped = AttnPrompter(feature_dim=C, prompt_dim=D, norm_groups=8, position_grid=3).eval()
    mapped.load_state_dict(paper.state_dict(), strict=False)
    with torch.no_grad():  # query feature 0 -> the upper-left cell of the 3x3 map, feature 1 -> the lower-right
        mapped.position.weight[0, 0] = 4.0
        mapped.position.weight[8, 1] = 4.0
    pooled = torch.eye(2, C)  # query 0 reads "upper left", query 1 "lower right"
    inputs = _prompter_inputs(pooled, C=C, D=D)
    with torch.no_grad():
        added = mapped(**inputs).activation - paper(**inputs).activation  # 2 x 27 x 27
    # Each coarse cell covers 9 patches; bilinear upsampling holds the corner cell's value up to its centre
    # (patch 4) and reaches 0 at the next cell's centre (patch 13).
    torch.testing.assert_close(added[0, :5, :5], torch.full((5, 5), 4.0))
    assert added[0, 13:].abs().max() < 1e-5 and added[0, :, 13:].abs().max() < 1e-5
    torch.testing.assert_close(added[1, -5:, -5:], torch.full((5, 5), 4.0))
    assert added[1, :14].abs().max() < 1e-5 and added[1, :, :14].abs().max() < 1e-5

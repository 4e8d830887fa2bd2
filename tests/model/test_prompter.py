import torch
import torch.nn.functional as F

from rsrs.model.prompter import AttnPrompter, text_activated_features


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

"""Each term of RSRefSeg 2's objective against a direct computation, and the cross-rank gather."""

import math
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from rsrs.model.losses import dice_loss
from rsrs.model.rsrefseg2.losses import (
    contrastive_loss,
    gather_across_ranks,
    mask_pooled_features,
    query_similarity_loss,
    rsrefseg2_loss,
)
from rsrs.model.rsrefseg2.outputs import RSRefSeg2Output


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_vnet_dice_matches_hand_computation():
    logits = torch.tensor([[[0.0, 100.0], [-100.0, 100.0]]])  # probabilities 0.5, 1, 0, 1
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    inter, p2, t2 = 0.5 + 1.0, 0.25 + 1 + 0 + 1, 2.0
    expected = 1 - 2 * inter / (p2 + 1e-3 + t2 + 1e-3)
    torch.testing.assert_close(dice_loss(logits, target, eps=1e-3, squared=True), torch.tensor(expected))


def test_query_similarity_is_the_mean_squared_cosine_of_the_set_means():
    q1, q2 = _randn(3, 4, 5, seed=1), _randn(3, 4, 5, seed=2)
    a, b = q1.mean(1), q2.mean(1)
    cos = [float(a[i] @ b[i] / (a[i].norm() * b[i].norm())) for i in range(3)]
    expected = sum(c * c for c in cos) / 3
    torch.testing.assert_close(query_similarity_loss(q1, q2), torch.tensor(expected))


def test_mask_pooling_keeps_the_patches_under_the_mask_and_averages_over_the_grid():
    patches = _randn(1, 4, 3, seed=1)  # a 2 x 2 grid
    mask = torch.zeros(1, 6, 4)  # the tile is padded to 6 x 6: the grid's right column lies in the padding
    mask[0, :3, :] = 1  # the top half of the square
    pooled = mask_pooled_features(patches, mask, (2, 2))
    # resized to 2 x 2 with corners aligned, > 0.5: the top-left patch only (the top-right one is padding)
    torch.testing.assert_close(pooled, patches[:, 0] / 4)


def test_contrastive_loss_is_the_symmetric_cross_entropy_of_matching_pairs():
    image, text = _randn(3, 5, seed=1), _randn(3, 5, seed=2)
    scale, bias = torch.tensor(2.0), torch.tensor(-0.5)
    i, t = image / image.norm(dim=1, keepdim=True), text / text.norm(dim=1, keepdim=True)
    logits = [[float(scale * (i[a] @ t[b]) + bias) for b in range(3)] for a in range(3)]

    def xent(rows):
        return sum(math.log(sum(math.exp(v) for v in row)) - row[k] for k, row in enumerate(rows)) / len(rows)

    columns = [list(col) for col in zip(*logits, strict=True)]
    expected = (xent(logits) + xent(columns)) / 2
    torch.testing.assert_close(contrastive_loss(image, text, scale=scale, bias=bias), torch.tensor(expected))


def test_the_objective_weights_its_four_terms_as_the_official_configuration():
    B, H, W, grid = 2, 8, 8, (2, 2)
    output = RSRefSeg2Output(
        logits=_randn(B, 1, H, W, seed=1), activation=torch.zeros(B, 1, 4, 4), queries1=_randn(B, 3, 5, seed=2),
        queries2=_randn(B, 3, 5, seed=3), patches=_randn(B, 4, 5, seed=4), grid=grid,
        contrastive_scale=torch.tensor(1 / 0.07), contrastive_bias=torch.tensor(math.log(0.5)),
    )  # fmt: skip
    masks = (_randn(B, H, W, seed=5) > 0).float()
    loss = rsrefseg2_loss(output, masks)
    terms = loss.terms
    torch.testing.assert_close(terms["bce"], F.binary_cross_entropy_with_logits(output.logits[:, 0], masks))
    torch.testing.assert_close(terms["dice"], dice_loss(output.logits[:, 0], masks, eps=1e-3, squared=True))
    torch.testing.assert_close(terms["query_similarity"], query_similarity_loss(output.queries1, output.queries2))
    contrastive = contrastive_loss(
        mask_pooled_features(output.patches, masks, grid), output.queries2.mean(1),
        scale=output.contrastive_scale, bias=output.contrastive_bias,
    )  # fmt: skip
    torch.testing.assert_close(terms["contrastive"], contrastive)
    expected = 5 * terms["bce"] + 5 * terms["dice"] + 0.5 * terms["query_similarity"] + 0.5 * terms["contrastive"]
    torch.testing.assert_close(loss.total, expected)


def test_gather_without_a_process_group_is_the_identity():
    x = _randn(3, 4, seed=1)
    assert gather_across_ranks(x) is x


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_loss(rank: int, world: int, port: int, image: torch.Tensor, text: torch.Tensor, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        mine = slice(2 * rank, 2 * rank + 2)
        local_image, local_text = image[mine].clone().requires_grad_(), text[mine].clone().requires_grad_()
        loss = contrastive_loss(local_image, local_text, scale=torch.tensor(3.0), bias=torch.tensor(-0.5))
        loss.backward()
        # plain lists: a tensor's shared memory would go with this process when it exits
        out.put((rank, [loss.item(), local_image.grad.tolist(), local_text.grad.tolist()]))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes each import torch: ~5 s on an idle machine, far more on a busy one
def test_under_two_ranks_each_scores_the_global_batch_with_gradient_through_its_own_samples():
    """Each rank's loss is the loss of the whole (gathered) batch; the gradient reaches this rank's own features
    only, where it equals the whole-batch loss's gradient (the other ranks' features come without gradient)."""
    image, text = _randn(4, 5, seed=1), _randn(4, 5, seed=2)
    ctx = mp.get_context("spawn")  # forked gloo ranks can deadlock on the parent's threads
    queue = ctx.SimpleQueue()
    port = _free_port()
    ranks = [ctx.Process(target=_rank_loss, args=(rank, 2, port, image, text, queue)) for rank in (0, 1)]
    for p in ranks:
        p.start()
    results = dict(queue.get() for _ in ranks)
    for p in ranks:
        p.join(timeout=60)
    assert [p.exitcode for p in ranks] == [0, 0]
    full_image, full_text = image.clone().requires_grad_(), text.clone().requires_grad_()
    full = contrastive_loss(full_image, full_text, scale=torch.tensor(3.0), bias=torch.tensor(-0.5))
    full.backward()
    for rank in (0, 1):
        loss, image_grad, text_grad = (torch.tensor(x) for x in results[rank])
        mine = slice(2 * rank, 2 * rank + 2)
        torch.testing.assert_close(loss, full.detach())
        torch.testing.assert_close(image_grad, full_image.grad[mine])
        torch.testing.assert_close(text_grad, full_text.grad[mine])

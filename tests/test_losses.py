"""Losses: hand-computed values, finiteness at the edges (shared/cases C01–C04)."""

import math

import pytest
import torch

from twinnet.errors import TwinnetError
from twinnet.losses import (ContrastiveLoss, MultipleNegativesLoss, OnlineContrastiveLoss, SumLoss, TripletLoss,
                            build_loss)


def _pair(x, y, label):
    emb = torch.tensor([x, y], dtype=torch.float64, requires_grad=True)
    a, b = torch.tensor([0]), torch.tensor([1])
    empty = torch.tensor([], dtype=torch.long)
    pairs = (a, b, empty, empty) if label == 1 else (empty, empty, a, b)
    return emb, pairs


def _contrastive_at_distance(d, label):
    emb, pairs = _pair([0.0, 0.0], [d, 0.0], label)
    loss = ContrastiveLoss(margin=1.0)(emb, None, pairs)
    loss.backward()
    return loss, emb.grad


def test_c01_identical_embeddings_same_and_different():
    x = [0.3, -0.2, 0.5]
    emb, pairs = _pair(x, x, 1)
    loss = ContrastiveLoss(margin=1.0)(emb, None, pairs)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(emb.grad, torch.zeros_like(emb))

    emb, pairs = _pair(x, x, 0)
    loss = ContrastiveLoss(margin=1.0)(emb, None, pairs)
    loss.backward()
    assert loss.item() == pytest.approx(1.0)  # margin**2 with margin 1
    assert torch.isfinite(emb.grad).all()


@pytest.mark.parametrize(("label", "d", "expected"), [(1, 0.0, 0.0), (0, 0.0, 1.0), (0, 1.5, 0.0), (1, 1.5, 2.25)])
def test_c04_label_convention(label, d, expected):
    loss, grad = _contrastive_at_distance(d, label)
    assert loss.item() == pytest.approx(expected)
    assert torch.isfinite(grad).all()


def test_c04_labels_checked_at_input():
    from twinnet.data.readers import parse_label

    with pytest.raises(TwinnetError, match="label must be 0 or 1"):
        parse_label("2", file="pairs.csv", row=3)
    assert parse_label("1", file="x", row=2) == 1 and parse_label(0, file="x", row=2) == 0


def test_c02_triplet_anchor_equals_positive():
    for margin, expected in ((5.0, 5.0 - math.sqrt(2.0)), (1.0, 0.0)):
        emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
        loss_fn = TripletLoss(margin=margin)
        loss = loss_fn(emb, None, (torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
        loss.backward()
        assert loss.item() == pytest.approx(expected, abs=1e-6)
        assert torch.isfinite(emb.grad).all()
        if expected == 0.0:
            assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_c03_batch_without_positives_and_partial():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(4, 8, dtype=torch.float64), dim=1).requires_grad_(True)
    loss_fn = TripletLoss(margin=0.2)
    loss = loss_fn(emb, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(emb.grad, torch.zeros_like(emb))
    assert loss_fn.last_stats["anchors"] == 0

    emb.grad = None
    loss = loss_fn(emb, torch.tensor([0, 1, 1, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    assert loss_fn.last_stats["anchors"] == 2
    assert loss_fn.last_stats["triplets"] == 4  # anchors 1 and 2, each with 2 negatives


def test_multiple_negatives_masks_same_entity_and_handles_no_positives():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(4, 8), dim=1).requires_grad_(True)
    loss_fn = MultipleNegativesLoss()
    assert loss_fn(emb, torch.tensor([0, 1, 2, 3])).item() == 0.0
    loss = loss_fn(emb, torch.tensor([0, 0, 1, 2]))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert loss_fn.last_stats == {"positive_pairs": 2, "negative_pairs": 10}
    # rows 0 and 1 share an entity: making them identical must not raise the loss (no push apart)
    same = emb.detach().clone()
    same[1] = same[0]
    assert loss_fn(same, torch.tensor([0, 0, 1, 2])).item() <= loss.item() + 1e-6


def test_online_contrastive_keeps_only_hard_pairs():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.8, 0.2]])
    emb = torch.nn.functional.normalize(emb, dim=1)
    # same pair (0, 2) is far apart (d² = 2); different pairs: (0, 3) opposite (d² = 4), (0, 4) close
    pairs = (torch.tensor([0]), torch.tensor([2]), torch.tensor([0, 0]), torch.tensor([3, 4]))
    loss_fn = OnlineContrastiveLoss(margin=1.0)
    loss_fn(emb, None, pairs)
    # the easy different pair (farther than every same pair) is dropped; the hard ones stay
    assert loss_fn.last_stats == {"positive_pairs": 1, "negative_pairs": 1}
    pairs = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([3]))
    loss_fn(emb, None, pairs)  # an easy batch: nothing is hard
    assert loss_fn.last_stats == {"positive_pairs": 0, "negative_pairs": 0}


def test_build_loss_registry():
    assert isinstance(build_loss("contrastive", margin=0.5), ContrastiveLoss)
    combined = build_loss("online_contrastive+multiple_negatives", margin=0.5, temperature=0.1)
    assert isinstance(combined, SumLoss) and len(combined.parts) == 2
    with pytest.raises(TwinnetError, match="unknown loss 'nope'"):
        build_loss("nope")


def test_loss_inputs_are_checked():
    emb = torch.randn(2, 3)
    loss = ContrastiveLoss()
    with pytest.raises(TwinnetError, match="one class/entity id per embedding"):
        loss(emb, torch.tensor([1]))
    with pytest.raises(TwinnetError, match="must be integers"):
        loss(emb, torch.tensor([0.5, 0.5]))
    with pytest.raises(TwinnetError, match="outside the batch"):
        loss(emb, None, (torch.tensor([0]), torch.tensor([5]), torch.tensor([], dtype=torch.long),
                         torch.tensor([], dtype=torch.long)))
    # a triplet tuple is read as one same pair and one different pair
    value = loss(torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.5, 0.0]]), None,
                 (torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
    assert value.item() == pytest.approx(1.0 - 0.25)

"""Entity-group and graded losses: hand-computed values, finiteness at the edges, empty batches."""

import math

import pytest
import torch

from twinnet.errors import TwinnetError
from twinnet.losses import (LOSSES, CoSENTLoss, CosineRegressionLoss, MultiSimilarityLoss, SupConLoss, TripletLoss,
                            build_loss)

EMPTY = torch.tensor([], dtype=torch.long)


def _emb(rows):
    return torch.tensor(rows, dtype=torch.float64, requires_grad=True)


def _graded(pairs):
    left = torch.tensor([a for a, _ in pairs])
    right = torch.tensor([b for _, b in pairs])
    return (left, right, EMPTY, EMPTY)


# ---------------------------------------------------------------------------------------------- SupCon
def test_supcon_hand_value():
    # anchor 0: positive 1 at cosine 1, the other entity at cosine 0; anchor 1 the same; anchor 2 has no positive.
    # -log(e^{1/T} / (e^{1/T} + e^0)) = log(1 + e^{-1/T}), averaged over anchors 0 and 1.
    emb = _emb([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss = SupConLoss(temperature=0.5)(emb, torch.tensor([0, 0, 1]))
    loss.backward()
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2.0)), abs=1e-9)
    assert torch.isfinite(emb.grad).all()


def test_supcon_identical_embeddings_finite():
    # every row identical: for each anchor 1 positive among 3 others, all at the same similarity -> log 3
    emb = _emb([[0.6, 0.8]] * 4)
    loss = SupConLoss(temperature=0.1)(emb, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert loss.item() == pytest.approx(math.log(3.0), abs=1e-9)
    assert torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 1, 2, 3]], ids=["one class", "no positives"])
@pytest.mark.parametrize("name", ["supcon", "multi_similarity", "batch_hard_triplet", "semi_hard_triplet"])
def test_group_losses_defined_without_contrast(name, labels):
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(4, 8, dtype=torch.float64), dim=1).requires_grad_(True)
    loss = build_loss(name)(emb, torch.tensor(labels))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(emb.grad, torch.zeros_like(emb))


# ---------------------------------------------------------------------------------------------- multi-similarity
def test_multi_similarity_hand_value():
    # S = cosine. anchor 0 (and 1): positive at S=1, negative at S=0; anchor 2: no positive, negatives at S=0.
    alpha, beta, base = 2.0, 2.0, 0.5
    emb = _emb([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss = MultiSimilarityLoss(alpha=alpha, beta=beta, base=base, mine=False)(emb, torch.tensor([0, 0, 1]))
    pos = 1 / alpha * math.log(1 + math.exp(-alpha * (1.0 - base)))
    neg = 1 / beta * math.log(1 + math.exp(beta * (0.0 - base)))
    anchor_2 = 1 / beta * math.log(1 + 2 * math.exp(beta * (0.0 - base)))
    assert loss.item() == pytest.approx((2 * (pos + neg) + anchor_2) / 3, abs=1e-9)


def test_multi_similarity_identical_embeddings_finite():
    emb = _emb([[0.6, 0.8]] * 4)
    loss = MultiSimilarityLoss()(emb, torch.tensor([0, 0, 1, 1]))  # alpha 2, beta 50, base 0.5, miner on
    loss.backward()
    # every S = 1: 1/2 log(1 + e^{-1}) + 1/50 log(1 + 2 e^{25}) per anchor
    expected = 0.5 * math.log(1 + math.exp(-1.0)) + 0.02 * math.log(1 + 2 * math.exp(25.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert torch.isfinite(emb.grad).all()


# ---------------------------------------------------------------------------------------------- triplets
@pytest.mark.parametrize(("margin", "expected"), [(0.2, 0.1), (0.15, 0.05), (0.1, 0.0), (0.05, 0.0)])
def test_triplet_margin_as_documented(margin, expected):
    # d(a, p) = 1, d(a, n) = 1.1: loss = max(0, 1 - 1.1 + margin); zero (and no gradient) once d(a, n) >= d(a, p) + margin
    emb = _emb([[0.0, 0.0], [1.0, 0.0], [0.0, 1.1]])
    loss = TripletLoss(margin=margin)(emb, None, (torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
    loss.backward()
    assert loss.item() == pytest.approx(expected, abs=1e-9)
    if expected == 0.0:
        assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_batch_hard_triplet_hand_value():
    # class 0: (0,0), (1,0), (0.5,0); class 1: (0,0.8), (3,0). Per anchor: farthest positive, nearest negative.
    emb = _emb([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0], [0.0, 0.8], [3.0, 0.0]])
    loss_fn = build_loss("batch_hard_triplet", margin=0.2)
    loss = loss_fn(emb, torch.tensor([0, 0, 0, 1, 1]))
    d34 = math.hypot(3.0, 0.8)
    per_anchor = [1.0 - 0.8 + 0.2,                        # anchor (0,0): positive (1,0), negative (0,0.8)
                  max(0.0, 1.0 - math.hypot(1, 0.8) + 0.2),  # anchor (1,0): 0 (negative far enough)
                  max(0.0, 0.5 - math.hypot(0.5, 0.8) + 0.2),  # anchor (0.5,0): 0
                  d34 - 0.8 + 0.2,                        # anchor (0,0.8): positive (3,0), negative (0,0)
                  d34 - 2.0 + 0.2]                        # anchor (3,0): negative (1,0)
    nonzero = [x for x in per_anchor if x > 0]
    assert loss.item() == pytest.approx(sum(nonzero) / len(nonzero), abs=1e-9)
    assert loss_fn.last_stats["triplets"] == 5


def test_semi_hard_triplet_keeps_only_semi_hard_negatives():
    # anchor (0,0), positive (1,0): d_ap = 1. Negatives at 1.5 (easy: beyond d_ap + margin), 1.1 (semi-hard),
    # 0.5 (hard: nearer than the positive). From anchor (1,0) the same positive; its negatives lie at 1.80, 1.49
    # and 1.118 -- only the last is within d_ap + margin.
    emb = _emb([[0.0, 0.0], [1.0, 0.0], [0.0, 1.5], [0.0, 1.1], [0.0, 0.5]])
    loss_fn = build_loss("semi_hard_triplet", margin=0.2)
    loss = loss_fn(emb, torch.tensor([0, 0, 1, 2, 3]))
    loss.backward()
    assert loss_fn.last_stats["triplets"] == 2
    expected = ((1.0 - 1.1 + 0.2) + (1.0 - math.hypot(1.0, 0.5) + 0.2)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-9)
    assert torch.isfinite(emb.grad).all()


def test_batch_hard_identical_embeddings_give_the_margin():
    emb = _emb([[0.3, -0.2]] * 4)
    loss = build_loss("batch_hard_triplet", margin=0.2)(emb, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert loss.item() == pytest.approx(0.2)
    assert torch.isfinite(emb.grad).all()


# ---------------------------------------------------------------------------------------------- graded
def test_cosent_hand_values():
    # pair (0,1): cosine 1; pair (2,3): cosine 0
    rows = [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    pairs = _graded([(0, 1), (2, 3)])
    loss_fn = CoSENTLoss(scale=2.0)
    emb = _emb(rows)
    wrong_order = loss_fn(emb, None, pairs, torch.tensor([0.2, 0.8], dtype=torch.float64))
    wrong_order.backward()
    assert wrong_order.item() == pytest.approx(math.log(1 + math.exp(2.0)), abs=1e-6)  # exp(scale * (1 - 0))
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0
    right_order = loss_fn(_emb(rows), None, pairs, torch.tensor([0.8, 0.2], dtype=torch.float64))
    assert right_order.item() == pytest.approx(math.log(1 + math.exp(-2.0)), abs=1e-6)
    emb = _emb(rows)
    tied = loss_fn(emb, None, pairs, torch.tensor([0.5, 0.5], dtype=torch.float64))
    tied.backward()
    assert tied.item() == 0.0 and torch.equal(emb.grad, torch.zeros_like(emb))
    assert loss_fn.last_stats == {"pairs": 2, "ordered_pairs": 0}


def test_cosent_identical_embeddings_finite():
    emb = _emb([[0.6, 0.8]] * 4)
    pairs = _graded([(0, 1), (1, 2), (2, 3)])
    loss = CoSENTLoss()(emb, None, pairs, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    loss.backward()
    assert loss.item() == pytest.approx(math.log(4.0), abs=1e-6)  # 3 ordered pairs, every difference 0
    assert torch.isfinite(emb.grad).all()


def test_cosine_regression_hand_value():
    emb = _emb([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss = CosineRegressionLoss()(emb, None, _graded([(0, 1), (2, 3)]), torch.tensor([0.2, 0.8], dtype=torch.float64))
    assert loss.item() == pytest.approx((0.8 ** 2 + 0.8 ** 2) / 2, abs=1e-6)


def test_graded_inputs_are_checked():
    emb = _emb([[1.0, 0.0], [0.0, 1.0]])
    pairs = _graded([(0, 1)])
    with pytest.raises(TwinnetError, match="needs targets"):
        CoSENTLoss()(emb, None, pairs)
    with pytest.raises(TwinnetError, match="one float per pair"):
        CoSENTLoss()(emb, None, pairs, torch.tensor([0.1, 0.2]))
    with pytest.raises(TwinnetError, match="NaN"):
        CoSENTLoss()(emb, None, pairs, torch.tensor([float("nan")]))
    with pytest.raises(TwinnetError, match="cannot be added"):
        build_loss("cosent+contrastive")


def test_registry_names():
    for name in ("supcon", "multi_similarity", "batch_hard_triplet", "semi_hard_triplet", "cosent",
                 "cosine_regression"):
        assert name in LOSSES
    assert build_loss("batch_hard_triplet", margin=0.3).miner is not None
    assert build_loss("semi_hard_triplet", margin=0.3).loss.margin == 0.3
    assert build_loss("triplet").miner is None

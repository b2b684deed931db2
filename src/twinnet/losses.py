"""Losses chosen by name, built on pytorch-metric-learning.

Every loss takes the pytorch-metric-learning call shape ``loss(embeddings, labels=None,
indices_tuple=None)``. The trainer passes a batch of *distinct* records' embeddings, the entity
label of each row (``labels``; two rows of the same entity share it, so they are never pushed
apart) and the labelled pairs among them as ``indices_tuple = (a1, p, a2, n)``: positive pairs
``(a1[i], p[i])`` and negative pairs ``(a2[j], n[j])``.

``labels`` are class/entity ids (equal id = same entity), as in pytorch-metric-learning; 0/1 "same"
labels of pairs are expressed by which tuple a pair is in (positive = same). After a call, ``loss.last_stats`` says how many pairs,
triplets or anchors actually contributed, so an empty batch is visible rather than silently zero.

Graded similarity (STS-B's 0–5 scores) goes through the same call with ``targets``: one float per pair
``(a1[i], p[i])`` of ``indices_tuple``, scaled to [0, 1]. Losses for graded data set ``needs_targets``
(``cosent``, ``cosine_regression``); the others are for same/different data.

Entity-group losses (``supcon``, ``multi_similarity``, ``batch_hard_triplet``, ``semi_hard_triplet``) read
only ``labels``: every two rows with the same label are a positive pair, every two with different labels a
negative pair. A batch with no positive pair, or with one class only (no negative), gives exactly 0 with a
zero gradient: there is nothing to contrast.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from twinnet.errors import TwinnetError

IndicesTuple = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class TwinLoss(nn.Module):
    """Base class: subclasses implement ``compute`` and may set ``needs_pairs`` / ``needs_labels``."""

    needs_pairs = False    # uses the labelled pairs (indices_tuple)
    needs_labels = False   # uses entity labels for in-batch negatives
    needs_targets = False  # graded similarity per pair (targets), not same/different

    def __init__(self) -> None:
        super().__init__()
        self.last_stats: dict[str, int] = {}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None,
                indices_tuple: IndicesTuple | None = None, targets: torch.Tensor | None = None) -> torch.Tensor:
        if embeddings.dim() != 2:
            raise TwinnetError(f"embeddings must be a 2-D batch, got shape {tuple(embeddings.shape)}")
        if labels is not None:
            if labels.dim() != 1 or len(labels) != len(embeddings):
                raise TwinnetError(f"labels must hold one class/entity id per embedding: got {tuple(labels.shape)} "
                                   f"for {len(embeddings)} embeddings")
            if labels.is_floating_point():
                raise TwinnetError("labels are class/entity ids and must be integers")
        if indices_tuple is not None:
            if len(indices_tuple) not in (3, 4):
                raise TwinnetError("indices_tuple must be (anchor, positive, negative) or (a1, p, a2, n)")
            for part in indices_tuple:
                if len(part) and (part.min() < 0 or part.max() >= len(embeddings)):
                    raise TwinnetError("indices_tuple points outside the batch of embeddings")
        if self.needs_pairs and indices_tuple is None and labels is None:
            raise TwinnetError(f"{type(self).__name__} needs labelled pairs or class labels")
        if self.needs_labels and labels is None:
            raise TwinnetError(f"{type(self).__name__} needs class/entity labels")
        if targets is not None:
            if indices_tuple is None:
                raise TwinnetError("targets grade the pairs (a1[i], p[i]) of indices_tuple; no indices_tuple given")
            if targets.dim() != 1 or len(targets) != len(indices_tuple[0]) or not targets.is_floating_point():
                raise TwinnetError(f"targets must be one float per pair: got shape {tuple(targets.shape)} for "
                                   f"{len(indices_tuple[0])} pairs")
            if not torch.isfinite(targets).all():
                raise TwinnetError("targets contain NaN or inf")
        if self.needs_targets and targets is None:
            raise TwinnetError(f"{type(self).__name__} is for graded similarity and needs targets (one score per pair)")
        if self.needs_targets:
            return self.compute_graded(embeddings, indices_tuple[0], indices_tuple[1], targets)
        return self.compute(embeddings, labels, indices_tuple)

    def compute(self, embeddings, labels, indices_tuple) -> torch.Tensor:
        raise NotImplementedError

    def compute_graded(self, embeddings: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                       targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def zero(embeddings: torch.Tensor) -> torch.Tensor:
        """A loss of exactly 0 that still has a (zero) gradient path to the embeddings."""
        return embeddings.sum() * 0.0


def _pairs(labels: torch.Tensor | None, indices_tuple: IndicesTuple | None) -> IndicesTuple:
    if indices_tuple is not None:
        return lmu.convert_to_pairs(indices_tuple, labels)  # triplets (a, p, n) become pairs (a, p, a, n)
    return lmu.get_all_pairs_indices(labels)


class SquaredEuclideanDistance(pml_distances.LpDistance):
    """``||x - y||²`` computed exactly: identical vectors give distance 0 and gradient 0 (no sqrt)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(normalize_embeddings=False, p=2, power=1, **kwargs)

    def compute_mat(self, query_emb, ref_emb):
        return ((query_emb.unsqueeze(1) - ref_emb.unsqueeze(0)) ** 2).sum(-1)

    def pairwise_distance(self, query_emb, ref_emb):
        return ((query_emb - ref_emb) ** 2).sum(-1)


def _mean_of_nonzero(losses: torch.Tensor) -> torch.Tensor:
    """pytorch-metric-learning's AvgNonZeroReducer: pairs already beyond their margin do not dilute."""
    count = (losses > 0).sum()
    return losses.sum() / count.clamp(min=1)


class ContrastiveLoss(TwinLoss):
    """Hadsell-style contrastive loss: same pairs are pulled to distance 0, different pairs pushed
    beyond ``margin``.

    With the default distance (squared Euclidean) a same pair costs ``d²`` and a different pair
    ``max(0, margin - d²)``; on unit vectors ``d² = 2 - 2·cos``, so margin 1.0 pushes different pairs
    below cosine 0.5. The same and the different pairs are each averaged over the pairs with a
    non-zero loss, then added (pytorch-metric-learning's reduction).
    """

    needs_pairs = True

    def __init__(self, margin: float = 1.0, distance: pml_distances.BaseDistance | None = None) -> None:
        super().__init__()
        self.margin = margin
        self.loss = pml_losses.ContrastiveLoss(pos_margin=0.0, neg_margin=margin,
                                               distance=distance or SquaredEuclideanDistance())

    def compute(self, embeddings, labels, indices_tuple):
        pairs = self.select(embeddings, _pairs(labels, indices_tuple))
        self.last_stats = {"positive_pairs": int(len(pairs[0])), "negative_pairs": int(len(pairs[2]))}
        positive, negative = self.pair_losses(embeddings, pairs)
        # The per-pair terms come from pytorch-metric-learning's ContrastiveLoss; its forward() is not
        # used because it returns 0 for a batch holding a single pair.
        return self.zero(embeddings) + _mean_of_nonzero(positive) + _mean_of_nonzero(negative)

    def select(self, embeddings, pairs: IndicesTuple) -> IndicesTuple:
        return pairs

    def pair_losses(self, embeddings: torch.Tensor, pairs: IndicesTuple) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pair losses (same pairs, different pairs), unreduced."""
        dist = self.loss.distance
        d_pos = dist.pairwise_distance(embeddings[pairs[0]], embeddings[pairs[1]])
        d_neg = dist.pairwise_distance(embeddings[pairs[2]], embeddings[pairs[3]])
        return self.loss.get_per_pair_loss(d_pos, "pos"), self.loss.get_per_pair_loss(d_neg, "neg")


class OnlineContrastiveLoss(ContrastiveLoss):
    """Contrastive loss over the hard pairs of the batch only: same pairs farther apart than the
    closest different pair, and different pairs closer than the farthest same pair."""

    def select(self, embeddings, pairs):
        a1, p, a2, n = pairs
        if len(a1) == 0 or len(a2) == 0:
            return pairs
        with torch.no_grad():
            dist = self.loss.distance
            d_pos = dist.pairwise_distance(embeddings[a1], embeddings[p])
            d_neg = dist.pairwise_distance(embeddings[a2], embeddings[n])
            hard_pos = d_pos > d_neg.min()
            hard_neg = d_neg < d_pos.max()
        return a1[hard_pos], p[hard_pos], a2[hard_neg], n[hard_neg]


class MultipleNegativesLoss(TwinLoss):
    """In-batch negatives (InfoNCE / NT-Xent): each same pair must out-score every record of another
    entity in the batch. Rows sharing an entity label are never used as each other's negatives."""

    needs_labels = True

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        self.loss = pml_losses.NTXentLoss(temperature=temperature)

    def compute(self, embeddings, labels, indices_tuple):
        a1, p, a2, n = lmu.get_all_pairs_indices(labels)
        self.last_stats = {"positive_pairs": int(len(a1)), "negative_pairs": int(len(a2))}
        if len(a1) == 0:
            return self.zero(embeddings)
        return self.loss(embeddings, labels)


class TripletLoss(TwinLoss):
    """Triplet margin loss ``max(0, d(a, p) - d(a, n) + margin)`` (Euclidean distance by default),
    averaged over the triplets whose loss is above 0.

    Which triplets: those given as ``(anchor, positive, negative)`` indices, else the ones a ``miner``
    picks from the entity labels (``batch_hard``: per anchor its farthest positive and nearest negative;
    ``semi_hard``: negatives farther than the positive but within ``margin`` of it), else every valid
    triplet. ``last_stats['anchors']`` counts anchors that have both a positive and a negative; with
    none the loss is exactly 0 with a zero gradient."""

    def __init__(self, margin: float = 0.2, distance: pml_distances.BaseDistance | None = None,
                 miner: str | None = None) -> None:
        super().__init__()
        distance = distance or pml_distances.LpDistance(normalize_embeddings=False)
        self.loss = pml_losses.TripletMarginLoss(margin=margin, distance=distance, reducer=None)
        # the miner measures hardness with the loss's own distance, so "hard" means hard for this loss
        self.miner = build_miner(miner, margin=margin, distance=distance) if miner else None

    def compute(self, embeddings, labels, indices_tuple):
        if indices_tuple is not None and len(indices_tuple) == 3:
            triplets = indices_tuple
        elif labels is not None and self.miner is not None:
            triplets = self.miner(embeddings, labels)
        elif labels is not None:
            triplets = lmu.get_all_triplets_indices(labels)
        else:
            raise TwinnetError("TripletLoss needs class/entity labels or (anchor, positive, negative) indices")
        self.last_stats = {"triplets": int(len(triplets[0])), "anchors": int(torch.unique(triplets[0]).numel())}
        if len(triplets[0]) == 0:
            return self.zero(embeddings)
        return self.loss(embeddings, labels, indices_tuple=triplets)


class SupConLoss(TwinLoss):
    """Supervised contrastive loss (Khosla et al. 2020): for each row, every other row of its entity
    must out-score the rows of other entities; ``-mean log softmax`` over the positives at
    ``temperature``, averaged over the rows that have a positive. Rows of the same entity are
    positives, never negatives."""

    needs_labels = True

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.loss = pml_losses.SupConLoss(temperature=temperature)

    def compute(self, embeddings, labels, indices_tuple):
        a1, p, a2, n = lmu.get_all_pairs_indices(labels)
        self.last_stats = {"positive_pairs": int(len(a1)), "negative_pairs": int(len(a2))}
        if len(a1) == 0 or len(a2) == 0:
            return self.zero(embeddings)
        return self.loss(embeddings, labels)


class MultiSimilarityLoss(TwinLoss):
    """Multi-similarity loss (Wang et al. 2019) on cosine similarity ``S``: per row
    ``1/alpha log(1 + sum_pos exp(-alpha (S - base))) + 1/beta log(1 + sum_neg exp(beta (S - base)))``,
    averaged over the rows with a non-zero loss. With ``mine=True`` only the informative pairs count
    (pytorch-metric-learning's MultiSimilarityMiner, ``epsilon``)."""

    needs_labels = True

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, mine: bool = True,
                 epsilon: float = 0.1) -> None:
        super().__init__()
        self.loss = pml_losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)
        self.miner = build_miner("multi_similarity", epsilon=epsilon) if mine else None

    def compute(self, embeddings, labels, indices_tuple):
        a1, p, a2, n = self.miner(embeddings, labels) if self.miner else lmu.get_all_pairs_indices(labels)
        self.last_stats = {"positive_pairs": int(len(a1)), "negative_pairs": int(len(a2))}
        if len(a1) == 0 or len(a2) == 0:
            return self.zero(embeddings)
        return self.loss(embeddings, labels, indices_tuple=(a1, p, a2, n))


def _pair_cosine(embeddings: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    return nn.functional.cosine_similarity(embeddings[left], embeddings[right], dim=-1, eps=1e-8)


class CoSENTLoss(TwinLoss):
    """CoSENT (Su 2022) for graded similarity: only the order of the scores is learnt. With
    ``s`` the cosine of each pair and ``t`` its target,
    ``log(1 + sum over pairs (i, j) with t_i > t_j of exp(scale * (s_j - s_i)))``: every pair graded
    more similar must score above every pair graded less similar. A batch whose targets are all
    equal has no such (i, j) and gives exactly 0."""

    needs_targets = True

    def __init__(self, scale: float = 20.0) -> None:
        super().__init__()
        self.scale = scale

    def compute_graded(self, embeddings, left, right, targets):
        scores = _pair_cosine(embeddings, left, right).float() * self.scale
        ordered = targets[:, None] > targets[None, :]  # (i, j): pair i graded above pair j
        self.last_stats = {"pairs": int(len(left)), "ordered_pairs": int(ordered.sum())}
        if not ordered.any():
            return self.zero(embeddings)
        differences = (scores[None, :] - scores[:, None])[ordered]  # s_j - s_i
        # log(1 + sum exp(x)) = logsumexp over [0, x...]
        return self.zero(embeddings) + torch.logsumexp(torch.cat([differences.new_zeros(1), differences]), dim=0)


class CosineRegressionLoss(TwinLoss):
    """Mean squared error between each pair's cosine and its target (targets in [0, 1])."""

    needs_targets = True

    def compute_graded(self, embeddings, left, right, targets):
        self.last_stats = {"pairs": int(len(left))}
        if len(left) == 0:
            return self.zero(embeddings)
        scores = _pair_cosine(embeddings, left, right).float()
        return self.zero(embeddings) + ((scores - targets.float()) ** 2).mean()


class BinaryHeadLoss(TwinLoss):
    """Koch et al.'s verification objective: a logistic classifier over the component-wise distance
    ``|u - v|`` of each labelled pair, trained with binary cross-entropy (same = 1) together with the encoder.

    The classifier's weights are parameters of the loss (the trainer optimises them with the model's); they
    shape the embedding space during training. The saved model still scores pairs by cosine similarity with the
    threshold fitted on validation, so the head is not part of the model folder. ``embedding_dim`` is filled in
    by the trainer; without it the layer sizes itself on the first batch.
    """

    needs_pairs = True

    def __init__(self, embedding_dim: int | None = None) -> None:
        super().__init__()
        self.classifier = nn.Linear(embedding_dim, 1) if embedding_dim else nn.LazyLinear(1)

    def logits(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self.classifier((left - right).abs()).squeeze(-1)

    def compute(self, embeddings, labels, indices_tuple):
        a1, p, a2, n = _pairs(labels, indices_tuple)
        self.last_stats = {"positive_pairs": int(len(a1)), "negative_pairs": int(len(a2))}
        if len(a1) + len(a2) == 0:
            return self.zero(embeddings)
        logits = self.logits(embeddings[torch.cat([a1, a2])], embeddings[torch.cat([p, n])])
        target = torch.cat([torch.ones(len(a1)), torch.zeros(len(a2))]).to(logits)
        return nn.functional.binary_cross_entropy_with_logits(logits, target)


class SumLoss(TwinLoss):
    """Several losses added together (``"online_contrastive+multiple_negatives"``)."""

    def __init__(self, parts: list[TwinLoss], weights: list[float] | None = None) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.weights = weights or [1.0] * len(parts)
        self.needs_pairs = any(p.needs_pairs for p in parts)
        self.needs_labels = any(p.needs_labels for p in parts)
        if len({p.needs_targets for p in parts}) > 1:
            raise TwinnetError("graded-similarity losses (cosent, cosine_regression) cannot be added to "
                               "same/different losses: they train on different data")
        self.needs_targets = parts[0].needs_targets if parts else False

    def forward(self, embeddings, labels=None, indices_tuple=None, targets=None):
        total = self.zero(embeddings)
        self.last_stats = {}
        for part, weight in zip(self.parts, self.weights):
            total = total + weight * part(embeddings, labels, indices_tuple, targets)
            self.last_stats.update({f"{type(part).__name__}.{k}": v for k, v in part.last_stats.items()})
        return total


def _semi_hard_triplets(margin: float = 0.2, distance: pml_distances.BaseDistance | None = None, **_: Any):
    return pml_miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard",
                                         distance=distance or pml_distances.LpDistance(normalize_embeddings=False))


def _batch_hard_triplets(distance: pml_distances.BaseDistance | None = None, **_: Any):
    return pml_miners.BatchHardMiner(distance=distance or pml_distances.LpDistance(normalize_embeddings=False))


MINERS: dict[str, Callable[..., Any]] = {
    "batch_hard": _batch_hard_triplets,
    "semi_hard": _semi_hard_triplets,
    "multi_similarity": lambda epsilon=0.1, **_: pml_miners.MultiSimilarityMiner(epsilon=epsilon),
}


def build_miner(name: str, **params: Any):
    """A pytorch-metric-learning miner by name (``batch_hard``, ``semi_hard``, ``multi_similarity``)."""
    if name not in MINERS:
        raise TwinnetError(f"unknown miner {name!r}; choose from {', '.join(MINERS)}")
    return MINERS[name](**params)


LOSSES: dict[str, Callable[..., TwinLoss]] = {
    "contrastive": ContrastiveLoss,
    "online_contrastive": OnlineContrastiveLoss,
    "multiple_negatives": MultipleNegativesLoss,
    "triplet": TripletLoss,
    "batch_hard_triplet": functools.partial(TripletLoss, miner="batch_hard"),
    "semi_hard_triplet": functools.partial(TripletLoss, miner="semi_hard"),
    "supcon": SupConLoss,
    "multi_similarity": MultiSimilarityLoss,
    "cosent": CoSENTLoss,
    "cosine_regression": CosineRegressionLoss,
    "binary_head": BinaryHeadLoss,
}
GRADED_LOSSES = ("cosent", "cosine_regression")


def build_loss(spec: str | TwinLoss, **params: Any) -> TwinLoss:
    """A loss from its registry name, or several joined with ``+``; ``params`` go to each part that
    accepts them (e.g. ``margin``, ``temperature``)."""
    if isinstance(spec, TwinLoss):
        return spec
    names = [name.strip() for name in spec.split("+")]
    unknown = [n for n in names if n not in LOSSES]
    if unknown:
        raise TwinnetError(f"unknown loss {unknown[0]!r}; choose from {', '.join(LOSSES)} (join with '+')")
    parts = []
    for name in names:
        accepted = inspect.signature(LOSSES[name]).parameters
        # a registry entry that fixes a parameter (the miner of batch_hard_triplet) keeps it
        fixed = LOSSES[name].keywords if isinstance(LOSSES[name], functools.partial) else {}
        parts.append(LOSSES[name](**{k: v for k, v in params.items() if k in accepted and k not in fixed}))
    return parts[0] if len(parts) == 1 else SumLoss(parts)

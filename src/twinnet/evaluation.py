"""Evaluate a model on labelled pairs with the threshold it stores (never re-tuned on the data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twinnet.baselines import TfidfBaseline
from twinnet.data.pairs import PairDataset, UnionFind
from twinnet.errors import TwinnetError
from twinnet.metrics import binary_metrics, bootstrap_intervals
from twinnet.model import SiameseModel, Truncation

HEADLINE = ("precision", "recall", "f1", "accuracy", "roc_auc", "average_precision", "eer",
            "tar_at_far_1e-2", "tar_at_far_1e-3", "ece", "brier")


@dataclass
class EvaluationReport:
    """Metrics at the stored threshold, with bootstrap intervals, the seen/unseen split and the
    TF-IDF baseline measured on the same pairs."""

    name: str
    metrics: dict[str, Any]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    subsets: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    retrieval: dict[str, float] | None = None
    truncation: Truncation = field(default_factory=Truncation)
    scores: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    labels: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "metrics": self.metrics, "intervals_95": self.intervals,
                "subsets": self.subsets, "tfidf_baseline": self.baseline, "retrieval": self.retrieval,
                "truncation": self.truncation.__dict__}

    def rows(self) -> list[tuple[str, str, str]]:
        """(metric, value, 95% interval) rows for display."""
        out = []
        for key in HEADLINE:
            value = self.metrics.get(key)
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            lo_hi = self.intervals.get(key)
            out.append((key, f"{value:.4f}", f"[{lo_hi[0]:.4f}, {lo_hi[1]:.4f}]" if lo_hi else ""))
        return out


def evaluate(model: SiameseModel, pairs: PairDataset, *, threshold: float | None = None, fmr: float | None = None,
             train: PairDataset | None = None, baseline: TfidfBaseline | None = None,
             bootstrap: int = 1000, seed: int = 0, batch_size: int = 128) -> EvaluationReport:
    """Score ``pairs`` and report metrics at the model's stored threshold (or an explicit one).

    ``train`` (or the record ids stored in the model card) splits the results into pairs whose
    records were seen in training and pairs whose records were not. A fitted ``baseline`` is
    scored on the same pairs with its own validation threshold.
    """
    if not pairs.has_labels:
        raise TwinnetError("evaluation needs labelled pairs (a 'label' column)", file=pairs.name or None)
    cut = model.decision_threshold(threshold, fmr=fmr)
    scores = model.score_pairs(pairs, batch_size=batch_size)
    truncation = model.last_truncation
    probabilities = model.predict_proba_scores(scores)
    has_probability = not np.isnan(probabilities).all()
    metrics = binary_metrics(pairs.labels, scores, cut, probabilities if has_probability else None)
    intervals = bootstrap_intervals(pairs.labels, scores, cut, rounds=bootstrap, seed=seed) if bootstrap else {}

    seen_ids = set(train.record_ids()) if train is not None else set(model.card_.get("train_record_ids", []))
    subsets: dict[str, dict[str, Any]] = {}
    if seen_ids:
        unseen = np.asarray([lid not in seen_ids and rid not in seen_ids
                             for lid, rid in zip(pairs.left_ids, pairs.right_ids)])
        for name, mask in (("seen", ~unseen), ("unseen", unseen)):
            if mask.any():
                subsets[name] = binary_metrics(pairs.labels[mask], scores[mask], cut)
    base = None
    if baseline is not None:
        base_scores = baseline.score_pairs(pairs)
        base = binary_metrics(pairs.labels, base_scores, baseline.calibration_.threshold_)
        for name, sub in list(subsets.items()):
            mask = ~unseen if name == "seen" else unseen
            sub["tfidf_f1"] = binary_metrics(pairs.labels[mask], base_scores[mask],
                                             baseline.calibration_.threshold_)["f1"]
    retrieval = retrieval_metrics(model, pairs, batch_size=batch_size)
    return EvaluationReport(pairs.name, metrics, intervals, subsets, base, retrieval, truncation, scores,
                            probabilities if has_probability else None, pairs.labels)


def retrieval_metrics(model: SiameseModel, pairs: PairDataset, *, ks: tuple[int, ...] = (1, 5, 10),
                      batch_size: int = 128, chunk: int = 256) -> dict[str, float] | None:
    """Search quality when the pairs define entities: each left record with at least one "same" partner
    queries all distinct right records of ``pairs``. Recall@k (a true partner in the top k), MRR and MAP@R.
    When both sides come from one collection (image identities, dedup pairs), a query is not ranked against
    itself: its own record would always come first and is never its own partner.

    Similarities are computed one chunk of queries at a time, so memory stays bounded.
    """
    first_left = {lid: rec for lid, rec in zip(pairs.left_ids, pairs.left)}
    first_right = {rid: rec for rid, rec in zip(pairs.right_ids, pairs.right)}
    if set(first_left) & set(first_right):
        # one collection: relevance is the entity (every record joined to the query through "same" pairs), and
        # the gallery is every record, so pairs drawn one way only (a→b, never b→a) still count both ways
        first_right = {**first_left, **first_right}
        first_left = first_right
        relevant = _same_entity_sets(pairs)
    else:
        relevant = {}
        for lid, rid, y in zip(pairs.left_ids, pairs.right_ids, pairs.labels):
            if y == 1:
                relevant.setdefault(lid, set()).add(rid)
    if not relevant:
        return None
    query_ids = sorted(relevant)
    gallery_ids = sorted(first_right)
    position = {rid: i for i, rid in enumerate(gallery_ids)}
    q = model.embed([first_left[i] for i in query_ids], batch_size=batch_size)
    g = model.embed([first_right[i] for i in gallery_ids], batch_size=batch_size)
    hits = {k: 0 for k in ks}
    reciprocal, average_precision = 0.0, 0.0
    for start in range(0, len(query_ids), chunk):
        sims = q[start: start + chunk] @ g.T
        for row, qid in enumerate(query_ids[start: start + chunk]):
            if qid in position and qid not in relevant[qid]:
                sims[row, position[qid]] = -np.inf  # ranked last, and it is not relevant
        order = np.argsort(-sims, axis=1, kind="stable")
        for row, qid in enumerate(query_ids[start: start + chunk]):
            wanted = np.zeros(len(gallery_ids), dtype=bool)
            wanted[[position[r] for r in relevant[qid]]] = True
            ranked = wanted[order[row]]
            first = int(np.argmax(ranked))
            for k in ks:
                hits[k] += bool(ranked[:k].any())
            reciprocal += 1.0 / (first + 1)
            r = int(wanted.sum())
            top = ranked[:r]
            precision_at = np.cumsum(top) / np.arange(1, r + 1)
            average_precision += float((precision_at * top).sum() / r)
    n = len(query_ids)
    out = {f"recall_at_{k}": hits[k] / n for k in ks}
    out.update({"mrr": reciprocal / n, "map_at_r": average_precision / n, "queries": n, "gallery": len(gallery_ids)})
    return out


def _same_entity_sets(pairs: PairDataset) -> dict[str, set[str]]:
    """For each record in a "same" pair, the other records of its entity (connected components of the
    "same" pairs, as entity groups for training are built)."""
    groups = UnionFind()
    for lid, rid, y in zip(pairs.left_ids, pairs.right_ids, pairs.labels):
        if y == 1:
            groups.union(lid, rid)
    members: dict[str, set[str]] = {}
    for lid, rid, y in zip(pairs.left_ids, pairs.right_ids, pairs.labels):
        if y == 1:
            members.setdefault(groups.find(lid), set()).update((lid, rid))
    return {x: group - {x} for group in members.values() for x in group if len(group) > 1}


def hardest_errors(report: EvaluationReport, pairs: PairDataset, model: Any = None, *,
                   per_kind: int = 3) -> list[dict[str, Any]]:
    """The worst mistakes at the stored threshold: the highest-scoring false matches and the lowest-scoring
    false non-matches, ``per_kind`` of each. Records are shown as they are compared: image references as they
    are, other records as the model's serialised text."""
    if report.scores is None or report.labels is None:
        return []
    from twinnet.data.images import is_image_ref

    def shown(record: Any) -> str:
        if isinstance(record, str) and is_image_ref(record):
            return record
        serializer = getattr(model, "serializer", None)
        return serializer(record) if serializer is not None else str(record)

    y, s, t = report.labels, report.scores, report.metrics["threshold"]
    false_match = np.nonzero((y == 0) & (s >= t))[0]
    false_non_match = np.nonzero((y == 1) & (s < t))[0]
    rows = []
    for kind, index in (("false match", false_match[np.argsort(-s[false_match], kind="stable")][:per_kind]),
                        ("false non-match", false_non_match[np.argsort(s[false_non_match], kind="stable")][:per_kind])):
        rows += [{"kind": kind, "pair": int(i), "score": float(s[i]), "left": shown(pairs.left[i]),
                  "right": shown(pairs.right[i])} for i in index]
    return rows

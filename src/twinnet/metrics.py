"""Metrics for same/different decisions, all computed from scores and 0/1 labels (1 = same).

Decision rule everywhere in twinnet: a pair is "same" when ``score >= threshold``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


@dataclass
class Sweep:
    """Every distinct cut of a score list, as the midpoint between neighbouring distinct scores.

    ``thresholds[i]`` calls the ``i + 1`` highest distinct score values "same"; the first entry is a
    threshold above every score (nothing is "same"), the last one below every score.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: int
    negatives: int

    @property
    def fn(self) -> np.ndarray:
        return self.positives - self.tp

    @property
    def tn(self) -> np.ndarray:
        return self.negatives - self.fp

    def precision(self) -> np.ndarray:
        called = self.tp + self.fp
        return np.divide(self.tp, called, out=np.ones_like(self.tp, dtype=float), where=called > 0)

    def recall(self) -> np.ndarray:
        return self.tp / max(self.positives, 1)

    def f1(self) -> np.ndarray:
        denom = 2 * self.tp + self.fp + self.fn
        return np.divide(2 * self.tp, denom, out=np.zeros_like(self.tp, dtype=float), where=denom > 0)

    def accuracy(self) -> np.ndarray:
        return (self.tp + self.tn) / max(self.positives + self.negatives, 1)

    def fmr(self) -> np.ndarray:
        """False-match rate: share of different pairs called same."""
        return self.fp / max(self.negatives, 1)

    def fnmr(self) -> np.ndarray:
        return self.fn / max(self.positives, 1)


def sweep(scores: np.ndarray, labels: np.ndarray) -> Sweep:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct value
    tp = np.r_[0, np.cumsum(y)[distinct]]
    fp = np.r_[0, np.cumsum(1 - y)[distinct]]
    values = s[distinct]
    gap = np.diff(values)  # negative: values are descending
    mids = values[:-1] + gap / 2
    spread = max(float(values[0] - values[-1]), 1e-6)
    thresholds = np.r_[values[0] + spread * 1e-3 + 1e-9, mids, values[-1] - spread * 1e-3 - 1e-9]
    return Sweep(thresholds, tp.astype(np.int64), fp.astype(np.int64), int(y.sum()), int(len(y) - y.sum()))


def confusion(labels: np.ndarray, predictions: np.ndarray) -> dict[str, int]:
    labels, predictions = np.asarray(labels).astype(bool), np.asarray(predictions).astype(bool)
    return {"tp": int((labels & predictions).sum()), "fp": int((~labels & predictions).sum()),
            "tn": int((~labels & ~predictions).sum()), "fn": int((labels & ~predictions).sum())}


def precision_recall_f1(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    c = confusion(labels, predictions)
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = (c["tp"] + c["tn"]) / max(sum(c.values()), 1)
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy}


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(EER, threshold) where the false-match and false-non-match rates cross."""
    fpr, tpr, thr = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2), float(thr[i])


def tar_at_far(labels: np.ndarray, scores: np.ndarray, far: float) -> float:
    """True-accept rate at the highest threshold whose false-accept rate is at most ``far``."""
    fpr, tpr, _ = roc_curve(labels, scores)
    ok = fpr <= far
    return float(tpr[ok].max()) if ok.any() else 0.0


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> float:
    """Equal-width-bin ECE: the average |accuracy - confidence| gap, weighted by bin size."""
    labels = np.asarray(labels, dtype=float)
    p = np.clip(np.asarray(probabilities, dtype=float), 0, 1)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.sum() * abs(labels[in_bin].mean() - p[in_bin].mean())
    return float(total / max(len(p), 1))


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return float(np.mean((np.asarray(probabilities, float) - np.asarray(labels, float)) ** 2))


def best_f1(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The highest F1 any threshold reaches on these pairs, and that threshold (diagnostic only:
    choosing a threshold this way on test data is exactly what twinnet never does)."""
    s = sweep(scores, labels)
    f1 = s.f1()
    i = int(np.argmax(f1))
    return float(f1[i]), float(s.thresholds[i])


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float,
                   probabilities: np.ndarray | None = None) -> dict[str, float | dict[str, int]]:
    """The full table for one threshold: P/R/F1/accuracy, ROC-AUC, AP, EER, TAR@FAR, confusion."""
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    predictions = scores >= threshold
    out: dict[str, float | dict[str, int]] = dict(precision_recall_f1(labels, predictions))
    out["threshold"] = float(threshold)
    both = 0 < labels.sum() < len(labels)
    out["roc_auc"] = float(roc_auc_score(labels, scores)) if both else float("nan")
    out["average_precision"] = float(average_precision_score(labels, scores)) if labels.sum() else float("nan")
    if both:
        out["eer"] = equal_error_rate(labels, scores)[0]
        out["tar_at_far_1e-2"] = tar_at_far(labels, scores, 1e-2)
        out["tar_at_far_1e-3"] = tar_at_far(labels, scores, 1e-3)
        out["best_f1"] = best_f1(labels, scores)[0]
    if probabilities is not None:
        out["ece"] = expected_calibration_error(labels, probabilities)
        out["brier"] = brier_score(labels, probabilities)
    out["confusion"] = confusion(labels, predictions)
    out["pairs"] = int(len(labels))
    out["positives"] = int(labels.sum())
    return out


def bootstrap_intervals(labels: np.ndarray, scores: np.ndarray, threshold: float, *, rounds: int = 1000,
                        level: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for precision, recall, F1 and ROC-AUC at a fixed threshold."""
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = len(labels)
    draws: dict[str, list[float]] = {"precision": [], "recall": [], "f1": [], "roc_auc": []}
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        y, s = labels[idx], scores[idx]
        prf = precision_recall_f1(y, s >= threshold)
        for key in ("precision", "recall", "f1"):
            draws[key].append(prf[key])
        if 0 < y.sum() < n:
            draws["roc_auc"].append(roc_auc_score(y, s))
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: (float(np.percentile(v, lo)), float(np.percentile(v, hi))) for k, v in draws.items() if v}


# ---------------------------------------------------------------------------------------------- collections
def pair_set_metrics(predicted: Iterable[tuple[Any, Any]], gold: Iterable[tuple[Any, Any]], *,
                     unordered: bool = True) -> dict[str, float]:
    """Precision, recall and F1 of predicted match pairs against gold pairs (ids; order ignored when
    ``unordered``). Blocking pair completeness is the recall of the candidate set."""
    def key(pair: tuple[Any, Any]) -> tuple[str, str]:
        a, b = str(pair[0]), str(pair[1])
        return (min(a, b), max(a, b)) if unordered else (a, b)

    predicted_set, gold_set = {key(p) for p in predicted}, {key(p) for p in gold}
    hits = len(predicted_set & gold_set)
    precision = hits / len(predicted_set) if predicted_set else 0.0
    recall = hits / len(gold_set) if gold_set else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "true_pairs_found": hits,
            "predicted_pairs": len(predicted_set), "gold_pairs": len(gold_set)}


def cluster_metrics(predicted: Sequence[Any], gold: Sequence[Any]) -> dict[str, float]:
    """Pairwise and B-cubed precision/recall/F1 of a clustering against gold entity labels.

    Computed from the cluster-by-entity contingency table, so the cost is linear in the number of records
    (no list of all pairs is built)."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predicted labels for {len(gold)} gold labels")
    if len(predicted) == 0:
        return {k: 0.0 for k in ("pairwise_precision", "pairwise_recall", "pairwise_f1",
                                 "bcubed_precision", "bcubed_recall", "bcubed_f1")}
    _, p = np.unique(np.asarray(predicted, dtype=str), return_inverse=True)
    _, g = np.unique(np.asarray(gold, dtype=str), return_inverse=True)
    joint = np.unique(p.astype(np.int64) * (g.max() + 1) + g, return_counts=True)
    n_ij = joint[1].astype(np.float64)
    cells_p, cells_g = joint[0] // (g.max() + 1), joint[0] % (g.max() + 1)
    size_p, size_g = np.bincount(p).astype(np.float64), np.bincount(g).astype(np.float64)
    together = float((n_ij * (n_ij - 1) / 2).sum())
    predicted_pairs = float((size_p * (size_p - 1) / 2).sum())
    gold_pairs = float((size_g * (size_g - 1) / 2).sum())
    pp = together / predicted_pairs if predicted_pairs else 1.0
    pr = together / gold_pairs if gold_pairs else 1.0
    # B-cubed: each record's share of its cluster that is its entity, and of its entity that is its cluster.
    bp = float((n_ij ** 2 / size_p[cells_p]).sum() / len(p))
    br = float((n_ij ** 2 / size_g[cells_g]).sum() / len(p))

    def f(a: float, b: float) -> float:
        return 2 * a * b / (a + b) if a + b else 0.0

    return {"pairwise_precision": pp, "pairwise_recall": pr, "pairwise_f1": f(pp, pr),
            "bcubed_precision": bp, "bcubed_recall": br, "bcubed_f1": f(bp, br),
            "predicted_pairs": int(predicted_pairs), "gold_pairs": int(gold_pairs), "true_pairs": int(together)}

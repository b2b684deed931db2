"""Evaluate a model on labelled pairs with the threshold it stores (never re-tuned on the data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twinnet.baselines import TfidfBaseline
from twinnet.data.pairs import PairDataset
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
    truncation: Truncation = field(default_factory=Truncation)
    scores: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    labels: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "metrics": self.metrics, "intervals_95": self.intervals,
                "subsets": self.subsets, "tfidf_baseline": self.baseline,
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
    return EvaluationReport(pairs.name, metrics, intervals, subsets, base, truncation, scores,
                            probabilities if has_probability else None, pairs.labels)

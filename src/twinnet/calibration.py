"""Decision thresholds and score-to-probability maps, fitted on validation data.

A fitted :class:`Calibrator` is plain data (``to_dict``/``from_dict``) saved as ``calibration.json``
beside the weights, so a loaded model decides exactly as it did when it was evaluated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from twinnet.errors import CalibrationError
from twinnet.metrics import Sweep, sweep

STRATEGIES = ("max_f1", "max_accuracy", "eer", "fmr", "recall", "cost")
PROBABILITY_MAPS = ("auto", "isotonic", "platt", "none")


class Calibrator:
    """Choose a threshold on validation scores and map scores to P(same).

    Parameters
    ----------
    strategy:
        ``max_f1`` (default), ``max_accuracy``, ``eer`` (false-match rate = false-non-match rate),
        ``fmr`` (lowest threshold whose false-match rate is at most ``target``), ``recall`` (highest
        threshold whose recall is at least ``target``), ``cost`` (least ``cost_ratio`` × false matches
        + false non-matches).
    target: the false-match rate or recall for ``fmr`` / ``recall``.
    cost_ratio: cost of one false match relative to one false non-match, for ``cost``.
    probability: ``auto`` (default: isotonic or Platt, whichever has the lower cross-validated Brier score on
        the validation pairs), ``isotonic``, ``platt`` or ``none``.

    When several cuts tie on the objective, the middle one of the tied cuts is taken; every cut
    sits at the midpoint between two neighbouring validation scores.
    """

    def __init__(self, strategy: str = "max_f1", *, target: float | None = None, cost_ratio: float = 1.0,
                 probability: str = "auto") -> None:
        self.strategy = strategy
        self.target = target
        self.cost_ratio = cost_ratio
        self.probability = probability

    # ------------------------------------------------------------------ fitting
    def fit(self, scores: np.ndarray, labels: np.ndarray) -> Calibrator:
        scores = np.asarray(scores, dtype=np.float64)
        raw = np.asarray(labels)
        if raw.size and not np.isin(raw, [0, 1]).all():
            raise CalibrationError("labels must be 0 or 1 (1 = same)")
        labels = raw.astype(np.int64)
        self._check(scores, labels)
        s = sweep(scores, labels)
        index = self._choose(s)
        self.threshold_ = float(s.thresholds[index])
        self.operating_point_ = {
            "threshold": self.threshold_, "precision": float(s.precision()[index]),
            "recall": float(s.recall()[index]), "f1": float(s.f1()[index]),
            "accuracy": float(s.accuracy()[index]), "fmr": float(s.fmr()[index]),
            "fnmr": float(s.fnmr()[index]), "pairs": int(len(labels)), "positives": int(labels.sum())}
        self._fit_probability(scores, labels)
        return self

    def check_params(self) -> Calibrator:
        """Validate the settings alone, so a trainer can refuse bad ones before hours of training."""
        if self.strategy not in STRATEGIES:
            raise CalibrationError(f"unknown threshold strategy {self.strategy!r}; use one of {STRATEGIES}")
        if self.probability not in PROBABILITY_MAPS:
            raise CalibrationError(f"unknown probability map {self.probability!r}; use one of {PROBABILITY_MAPS}")
        if self.strategy in ("fmr", "recall"):
            if self.target is None or not 0 <= self.target <= 1:
                raise CalibrationError(f"strategy {self.strategy!r} needs a target between 0 and 1, "
                                       f"got {self.target!r}")
        if self.strategy == "cost" and not self.cost_ratio > 0:
            raise CalibrationError(f"cost_ratio must be positive, got {self.cost_ratio!r}")
        return self

    def _check(self, scores: np.ndarray, labels: np.ndarray) -> None:
        self.check_params()
        if len(scores) != len(labels) or len(scores) == 0:
            raise CalibrationError(f"need equal, non-zero numbers of scores and labels "
                                   f"(got {len(scores)} and {len(labels)})")
        if not np.all(np.isfinite(scores)):
            raise CalibrationError(f"{int((~np.isfinite(scores)).sum())} validation scores are NaN or infinite; "
                                   "the model produced non-finite similarities")
        if not set(np.unique(labels)) <= {0, 1}:
            raise CalibrationError("labels must be 0 or 1 (1 = same)")
        positives = int(labels.sum())
        if positives == 0 or positives == len(labels):
            only = "same (1)" if positives else "different (0)"
            raise CalibrationError(f"validation data has only {only} pairs; a threshold needs both classes")
        if np.ptp(scores) == 0:
            raise CalibrationError("every validation score is identical, so no threshold separates anything; "
                                   "the model has collapsed or was not trained")

    def _choose(self, s: Sweep) -> int:
        if self.strategy == "max_f1":
            return _middle_of_best(s.f1())
        if self.strategy == "max_accuracy":
            return _middle_of_best(s.accuracy())
        if self.strategy == "eer":
            return _middle_of_best(-np.abs(s.fmr() - s.fnmr()))
        if self.strategy == "cost":
            return _middle_of_best(-(self.cost_ratio * s.fp + s.fn).astype(float))
        if self.strategy == "fmr":
            ok = np.nonzero(s.fmr() <= self.target + 1e-12)[0]
            return int(ok.max())  # index grows as the threshold falls: the lowest admissible threshold
        ok = np.nonzero(s.recall() >= self.target - 1e-12)[0]
        return int(ok.min())  # the highest threshold that still reaches the recall target

    def _fit_probability(self, scores: np.ndarray, labels: np.ndarray) -> None:
        method = self.probability
        if method == "auto":
            method = min(("isotonic", "platt"), key=lambda m: _cross_validated_brier(m, scores, labels))
        self.probability_method_ = method
        self.probability_params_ = _fit_map(method, scores, labels)

    # ------------------------------------------------------------------ use
    def predict(self, scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
        return (np.asarray(scores) >= (self.threshold_ if threshold is None else threshold)).astype(np.int64)

    def predict_proba(self, scores: np.ndarray) -> np.ndarray:
        """P(same) for each score; NaN where no probability map was fitted."""
        scores = np.asarray(scores, dtype=np.float64)
        return _apply_map(getattr(self, "probability_method_", "none"), getattr(self, "probability_params_", {}),
                          scores)

    def threshold_for(self, *, fmr: float | None = None, recall: float | None = None) -> float:
        """A threshold for another operating point, from the stored validation score curve."""
        curve = getattr(self, "curve_", None)
        if curve is None:
            raise CalibrationError("this calibration has no stored validation curve; refit it")
        s = Sweep(np.asarray(curve["thresholds"]), np.asarray(curve["tp"]), np.asarray(curve["fp"]),
                  curve["positives"], curve["negatives"])
        other = Calibrator("fmr" if fmr is not None else "recall", target=fmr if fmr is not None else recall)
        if other.target is None or not 0 <= other.target <= 1:
            raise CalibrationError("give a target between 0 and 1")
        return float(s.thresholds[other._choose(s)])

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "target": self.target, "cost_ratio": self.cost_ratio,
                "probability": self.probability, "probability_method": self.probability_method_,
                "threshold": self.threshold_,
                "operating_point": self.operating_point_, "probability_params": self.probability_params_,
                "validation_curve": getattr(self, "curve_", None)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        cal = cls(data["strategy"], target=data.get("target"), cost_ratio=data.get("cost_ratio", 1.0),
                  probability=data.get("probability", "none"))
        cal.threshold_ = float(data["threshold"])
        cal.operating_point_ = data.get("operating_point", {})
        cal.probability_params_ = data.get("probability_params", {})
        cal.probability_method_ = data.get("probability_method", cal.probability)
        if data.get("validation_curve"):
            cal.curve_ = data["validation_curve"]
        return cal

    FILE = "calibration.json"

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> Calibrator | None:
        """The calibration stored in a model folder, or None when the model was never calibrated."""
        path = Path(folder) / cls.FILE
        if not path.exists():
            return None
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"cannot be read as a calibration ({exc})", file=path) from None

    def __repr__(self) -> str:
        fitted = f", threshold_={self.threshold_:.4f}" if hasattr(self, "threshold_") else ""
        return f"Calibrator(strategy={self.strategy!r}, probability={self.probability!r}{fitted})"


def fit_calibrator(scores: np.ndarray, labels: np.ndarray, **options: Any) -> Calibrator:
    """Fit a :class:`Calibrator` and keep its validation curve, so other operating points
    (``--fmr``, ``--recall``) can be chosen later without the validation data."""
    cal = Calibrator(**options).fit(scores, labels)
    s = sweep(scores, labels)
    cal.curve_ = {"thresholds": s.thresholds.tolist(), "tp": s.tp.tolist(), "fp": s.fp.tolist(),
                  "positives": s.positives, "negatives": s.negatives}
    return cal


def _fit_map(method: str, scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(scores, labels)
        return {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1e4).fit(scores.reshape(-1, 1), labels)
        return {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}
    return {}


def _apply_map(method: str, params: dict[str, Any], scores: np.ndarray) -> np.ndarray:
    if method == "isotonic" and params:
        # a finite validation set never proves certainty: keep probabilities off exactly 0 and 1
        return np.clip(np.interp(scores, params["x"], params["y"]), 1e-3, 1 - 1e-3)
    if method == "platt" and params:
        return 1.0 / (1.0 + np.exp(-(params["a"] * scores + params["b"])))
    return np.full(scores.shape, np.nan)


def _cross_validated_brier(method: str, scores: np.ndarray, labels: np.ndarray, folds: int = 5) -> float:
    """Brier score of a probability map fitted on 4/5 of the validation pairs and scored on the rest."""
    from sklearn.model_selection import StratifiedKFold

    n_folds = min(folds, int(labels.sum()), int(len(labels) - labels.sum()))
    if n_folds < 2:
        return 0.0 if method == "platt" else 1.0  # too few pairs to compare: Platt has fewer parameters
    errors = []
    for fit_idx, held_idx in StratifiedKFold(n_folds, shuffle=True, random_state=0).split(scores, labels):
        params = _fit_map(method, scores[fit_idx], labels[fit_idx])
        errors.append(np.mean((_apply_map(method, params, scores[held_idx]) - labels[held_idx]) ** 2))
    return float(np.mean(errors))


def _middle_of_best(objective: np.ndarray) -> int:
    best = objective.max()
    tied = np.nonzero(np.isclose(objective, best, rtol=0, atol=1e-12))[0]
    return int(tied[len(tied) // 2])

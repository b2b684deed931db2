"""What every runnable model does with its embeddings: score pairs, decide, map to probabilities.

:class:`PairScorer` holds the parts that do not depend on how embeddings are computed, so the PyTorch
:class:`~twinnet.model.SiameseModel` and the PyTorch-free :class:`~twinnet.runtime.OnnxSiameseModel`
score, verify and calibrate through the same code. A subclass provides ``_embed_inputs`` and the
attributes ``serializer``, ``normalize``, ``calibration_`` and ``input_modality``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from twinnet.data.records import Record, is_missing
from twinnet.errors import TwinnetError

if TYPE_CHECKING:
    from twinnet.calibration import Calibrator
    from twinnet.data.pairs import PairDataset

log = logging.getLogger("twinnet")


@dataclass
class Truncation:
    """How many inputs of the last ``embed`` call were cut to the encoder's maximum length."""

    inputs: int = 0
    truncated: int = 0
    tokens_cut: int = 0
    max_tokens_cut: int = 0

    def message(self) -> str:
        return (f"{self.truncated} of {self.inputs} inputs were longer than the maximum length and were truncated "
                f"(up to {self.max_tokens_cut} tokens cut)")

    @classmethod
    def of(cls, tokens_cut: Sequence[int]) -> Truncation:
        cut = [int(c) for c in tokens_cut if c > 0]
        return cls(len(tokens_cut), len(cut), sum(cut), max(cut, default=0))


@dataclass
class Decision:
    """The verdict on one pair."""

    same: bool
    score: float
    probability: float


class PairScorer:
    """Scoring, decisions and calibration on top of ``_embed_inputs`` (see the module docstring)."""

    calibration_: Calibrator | None
    normalize: bool
    last_truncation: Truncation
    last_tokens_cut: np.ndarray  # per input of the last _embed_inputs call

    @property
    def input_modality(self) -> str:
        raise NotImplementedError

    def _embed_inputs(self, inputs: list[Any], *, batch_size: int, normalize: bool | None = None,
                      progress: Any = None) -> np.ndarray:
        raise NotImplementedError

    def to_inputs(self, records: Sequence[Record], *, what: str = "item") -> list[Any]:
        """Serialise records to the encoder's inputs, rejecting missing ones by index."""
        inputs = []
        for i, record in enumerate(records):
            if not isinstance(record, (str, dict)) and is_missing(record):
                raise TwinnetError(f"{what} {i} is missing (None/NaN); every item needs a value")
            try:
                inputs.append(self.serializer(record) if self.input_modality == "text" else record)
            except ValueError as exc:
                raise TwinnetError(f"{what} {i}: {exc}") from None
        return inputs

    def embed(self, records: Sequence[Record], *, batch_size: int = 64, normalize: bool | None = None,
              progress: Any = None) -> np.ndarray:
        """Embeddings of ``records`` as a float32 array (one row each, in order).

        Identical inputs are encoded once, and inputs of similar length are batched together.
        ``normalize=False`` returns the pooled embeddings before L2 normalisation.
        """
        if isinstance(records, (str, dict)):
            raise TwinnetError("embed() takes a list of records; wrap a single one in a list")
        inputs = self.to_inputs(records)
        return self._embed_inputs(inputs, batch_size=batch_size, normalize=normalize, progress=progress)

    def _record_truncation(self, tokens_cut: Sequence[int], inverse: np.ndarray) -> None:
        """Keep how many tokens were cut from each distinct input, and from each input in call order."""
        self.last_truncation = Truncation.of(tokens_cut)
        self.last_tokens_cut = np.asarray(tokens_cut, dtype=np.int64)[inverse]
        if self.last_truncation.truncated:
            log.warning(self.last_truncation.message())

    def score(self, left: Sequence[Record], right: Sequence[Record], *, batch_size: int = 64) -> np.ndarray:
        """Cosine similarity of each (left[i], right[i]) pair; every distinct record is embedded once."""
        if len(left) != len(right):
            raise TwinnetError(f"left has {len(left)} records but right has {len(right)}")
        return self._score_inputs(self.to_inputs(list(left), what="left item"),
                                  self.to_inputs(list(right), what="right item"), batch_size=batch_size)

    def _score_inputs(self, left: list[Any], right: list[Any], *, batch_size: int = 64) -> np.ndarray:
        emb = self._embed_inputs(left + right, batch_size=batch_size)
        return cosine_rows(emb[: len(left)], emb[len(left):], normalized=self.normalize)

    def score_pairs(self, pairs: PairDataset, *, batch_size: int = 64) -> np.ndarray:
        return self.score(pairs.left, pairs.right, batch_size=batch_size)

    def decision_threshold(self, threshold: float | None = None, *, fmr: float | None = None) -> float:
        """The threshold in force: an explicit one, one for a target false-match rate, or the stored one."""
        if threshold is not None:
            return float(threshold)
        if self.calibration_ is None:
            raise TwinnetError("this model has no fitted threshold; train it with a validation split, "
                               "call model.calibrate(valid), or pass a threshold")
        if fmr is not None:
            return self.calibration_.threshold_for(fmr=fmr)
        return self.calibration_.threshold_

    def decide(self, scores: np.ndarray, *, threshold: float | None = None,
               fmr: float | None = None) -> list[Decision]:
        """Decisions for precomputed scores, with the threshold in force."""
        cut = self.decision_threshold(threshold, fmr=fmr)
        probabilities = self.predict_proba_scores(scores)
        return [Decision(bool(s >= cut), float(s), float(p)) for s, p in zip(scores, probabilities)]

    def verify(self, left: Record | Sequence[Record], right: Record | Sequence[Record], *,
               threshold: float | None = None, fmr: float | None = None) -> Decision | list[Decision]:
        """Decide whether records are the same: one pair gives a :class:`Decision`, lists give a list."""
        single = isinstance(left, (str, dict)) or isinstance(right, (str, dict))
        for name, value in (("left", left), ("right", right)):
            if not isinstance(value, (str, dict, list, tuple)) and is_missing(value):
                raise TwinnetError(f"{name} record is missing (None/NaN)")
        if single and not (isinstance(left, (str, dict)) and isinstance(right, (str, dict))):
            raise TwinnetError("verify() takes two records, or two equally long lists of records")
        lefts, rights = ([left], [right]) if single else (list(left), list(right))
        if len(lefts) != len(rights):
            raise TwinnetError(f"left has {len(lefts)} records but right has {len(rights)}")
        sides = {"left": self.to_inputs(lefts, what="left item"), "right": self.to_inputs(rights, what="right item")}
        if self.input_modality == "text":
            # An empty record can be embedded (a defined vector), but "is it the same item?" has no answer for it:
            # refused here as in pair files and the service, so every face gives the same answer.
            for name, texts in sides.items():
                for i, text in enumerate(texts):
                    if not text.strip():
                        where = f"{name} record" if single else f"{name} item {i}"
                        raise TwinnetError(f"{where} is empty (after stripping whitespace); nothing to compare")
        decisions = self.decide(self._score_inputs(sides["left"], sides["right"]), threshold=threshold, fmr=fmr)
        return decisions[0] if single else decisions

    def predict_proba_scores(self, scores: np.ndarray) -> np.ndarray:
        if self.calibration_ is None:
            return np.full(len(scores), np.nan)
        return self.calibration_.predict_proba(scores)

    def predict(self, pairs: PairDataset, *, threshold: float | None = None) -> np.ndarray:
        """0/1 decisions for a pair dataset (scikit-learn style)."""
        return (self.score_pairs(pairs) >= self.decision_threshold(threshold)).astype(np.int64)

    def predict_proba(self, pairs: PairDataset) -> np.ndarray:
        return self.predict_proba_scores(self.score_pairs(pairs))

    def calibrate(self, valid: PairDataset, **options: Any) -> Calibrator:
        """Fit the threshold and probability map on labelled validation pairs and store them."""
        from twinnet.calibration import fit_calibrator

        if not valid.has_labels:
            raise TwinnetError("calibration needs labelled validation pairs", file=valid.name or None)
        self.calibration_ = fit_calibrator(self.score_pairs(valid), valid.labels, **options)
        return self.calibration_


def cosine_rows(a: np.ndarray, b: np.ndarray, *, normalized: bool = True) -> np.ndarray:
    """Row-wise cosine similarity (``normalized``: rows already have unit length)."""
    if not normalized:
        a = a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)
        b = b / np.clip(np.linalg.norm(b, axis=1, keepdims=True), 1e-12, None)
    return np.sum(a * b, axis=1).astype(np.float64)


def length_batches(costs: Sequence[int] | np.ndarray, batch_size: int, *, max_padding: float = 0.25
                   ) -> list[np.ndarray]:
    """Rows in batches for a forward pass: sorted by cost (tokens), at most ``batch_size`` rows each, and a batch
    is closed early once padding it to its longest row would waste more than ``max_padding`` of its real tokens.

    Why: padded positions cost as much as real ones. Cutting a length-sorted list into fixed counts still pads a
    mixed pass (the micro-batch of a service: 100 random records from 12 to 48 tokens) to its longest member, and
    measured 45% slower on CPU than batches cut where the length jumps. Every row appears exactly once.
    """
    costs = np.asarray(costs, dtype=np.int64)
    order = np.argsort(costs, kind="stable")
    batches: list[np.ndarray] = []
    start, real = 0, 0
    for position, row in enumerate(order):
        cost = int(costs[row])
        rows = position - start
        # sorted ascending, so the newcomer is the longest: padding everything to it costs cost * (rows + 1)
        if rows and (rows >= batch_size or cost * (rows + 1) > (1 + max_padding) * (real + cost)):
            batches.append(order[start:position])
            start, real = position, 0
        real += cost
    if start < len(order):
        batches.append(order[start:])
    return batches


def unique_inputs(items: Sequence[Any]) -> tuple[list[Any], np.ndarray]:
    """Distinct items (by value for text, by identity otherwise) and the map back to positions."""
    index: dict[Any, int] = {}
    unique: list[Any] = []
    inverse = np.empty(len(items), dtype=np.int64)
    for i, item in enumerate(items):
        key = item if isinstance(item, (str, bytes)) else id(item)
        if key not in index:
            index[key] = len(unique)
            unique.append(item)
        inverse[i] = index[key]
    return unique, inverse

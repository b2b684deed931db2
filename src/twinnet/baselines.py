"""String-similarity baseline: cosine of character n-gram TF-IDF vectors.

Every evaluation reports it on the same pairs, so a user sees at once whether the Siamese model has
learned more than surface similarity.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from twinnet.calibration import Calibrator, fit_calibrator
from twinnet.data.pairs import PairDataset
from twinnet.data.records import Record, RecordSerializer


class TfidfBaseline:
    """Character n-gram (``char_wb``, 2–5) TF-IDF with a threshold fitted on validation pairs."""

    def __init__(self, serializer: RecordSerializer | None = None, ngram_range: tuple[int, int] = (2, 5)) -> None:
        self.serializer = serializer or RecordSerializer()
        self.ngram_range = ngram_range

    def fit(self, train: PairDataset, valid: PairDataset) -> TfidfBaseline:
        left, right = train.texts(self.serializer)
        self.vectorizer_ = TfidfVectorizer(analyzer="char_wb", ngram_range=self.ngram_range, lowercase=True,
                                           sublinear_tf=True, min_df=1).fit(left + right)
        self.calibration_: Calibrator = fit_calibrator(self.score_pairs(valid), valid.labels)
        return self

    def score(self, left: Sequence[Record], right: Sequence[Record]) -> np.ndarray:
        a = self.vectorizer_.transform(self.serializer.serialize_many(left))
        b = self.vectorizer_.transform(self.serializer.serialize_many(right))
        return np.asarray(a.multiply(b).sum(axis=1)).ravel().astype(np.float64)  # rows are L2-normalised

    def score_pairs(self, pairs: PairDataset) -> np.ndarray:
        return self.score(pairs.left, pairs.right)

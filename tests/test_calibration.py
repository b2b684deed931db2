"""Thresholds and probabilities fitted on validation (shared/cases C05, C06), and the metrics."""

import json

import numpy as np
import pytest

from twinnet.calibration import Calibrator, fit_calibrator
from twinnet.errors import CalibrationError
from twinnet.metrics import binary_metrics, bootstrap_intervals, expected_calibration_error, sweep

C05_SCORES = np.array([0.9, 0.85, 0.7, 0.2, 0.01])
C05_LABELS = np.array([1, 1, 0, 1, 0])


def test_c05_max_f1_and_accuracy():
    cal = Calibrator().fit(C05_SCORES, C05_LABELS)
    assert 0.01 < cal.threshold_ <= 0.20
    assert cal.threshold_ == pytest.approx((0.2 + 0.01) / 2)  # midpoint between neighbouring scores
    op = cal.operating_point_
    assert op["f1"] == pytest.approx(6 / 7, abs=1e-3) and op["precision"] == 0.75 and op["recall"] == 1.0
    acc = Calibrator("max_accuracy").fit(C05_SCORES, C05_LABELS)
    assert acc.operating_point_["accuracy"] == pytest.approx(0.8)


def test_c05_single_class_is_a_clear_error():
    with pytest.raises(CalibrationError, match="only same"):
        Calibrator().fit(C05_SCORES, np.ones(5, dtype=int))


def test_c06_imbalanced_validation_threshold_applied_unchanged():
    scores = np.array([0.92, 0.85, 0.60, 0.88, 0.70, 0.55, 0.50, 0.40, 0.30, 0.20, 0.10])
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    cal = Calibrator().fit(scores, labels)
    assert 0.55 < cal.threshold_ <= 0.60
    assert cal.operating_point_["f1"] == pytest.approx(0.75)
    assert cal.operating_point_["precision"] == pytest.approx(0.6)
    fixed = binary_metrics(labels, scores, 0.5)
    assert fixed["f1"] == pytest.approx(0.6)
    test_scores = np.array([0.58, 0.57])
    assert cal.predict(test_scores).tolist() == [1, 0]  # the stored threshold, not re-tuned


def test_hand_computed_sweep():
    s = sweep(np.array([0.8, 0.8, 0.3]), np.array([1, 0, 1]))
    assert s.tp.tolist() == [0, 1, 2] and s.fp.tolist() == [0, 1, 1]
    assert s.thresholds[1] == pytest.approx(0.55)


def test_strategies():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(200, int), np.zeros(800, int)]
    scores = np.r_[rng.normal(0.8, 0.1, 200), rng.normal(0.4, 0.15, 800)]
    fmr = Calibrator("fmr", target=0.01).fit(scores, labels)
    assert fmr.operating_point_["fmr"] <= 0.01
    # the lowest such threshold: one notch lower breaks the target
    assert (scores[labels == 0] >= fmr.threshold_).mean() <= 0.01
    rec = Calibrator("recall", target=0.95).fit(scores, labels)
    assert rec.operating_point_["recall"] >= 0.95
    eer = Calibrator("eer").fit(scores, labels)
    assert abs(eer.operating_point_["fmr"] - eer.operating_point_["fnmr"]) < 0.02
    cheap = Calibrator("cost", cost_ratio=0.1).fit(scores, labels)
    dear = Calibrator("cost", cost_ratio=10).fit(scores, labels)
    assert dear.threshold_ > cheap.threshold_  # costly false matches -> stricter threshold


def test_bad_calibration_inputs():
    with pytest.raises(CalibrationError, match="identical"):
        Calibrator().fit(np.full(4, 0.5), np.array([0, 1, 0, 1]))
    with pytest.raises(CalibrationError, match="NaN"):
        Calibrator().fit(np.array([0.1, np.nan, 0.3, 0.2]), np.array([0, 1, 0, 1]))
    with pytest.raises(CalibrationError, match="needs a target"):
        Calibrator("fmr").fit(C05_SCORES, C05_LABELS)
    with pytest.raises(CalibrationError, match="unknown threshold strategy"):
        Calibrator("magic").fit(C05_SCORES, C05_LABELS)


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_probability_maps_are_monotone_and_calibrated(method):
    rng = np.random.default_rng(1)
    scores = rng.uniform(0, 1, 4000)
    labels = (rng.uniform(0, 1, 4000) < scores ** 2).astype(int)  # true P(same) = score²
    cal = Calibrator(probability=method).fit(scores, labels)
    grid = np.linspace(0, 1, 50)
    p = cal.predict_proba(grid)
    assert np.all(np.diff(p) >= -1e-12) and p.min() >= 0 and p.max() <= 1
    # close to the true probability on fresh scores
    fresh = rng.uniform(0, 1, 4000)
    assert np.mean(np.abs(cal.predict_proba(fresh) - fresh ** 2)) < (0.03 if method == "isotonic" else 0.08)
    labels_fresh = (rng.uniform(0, 1, 4000) < fresh ** 2).astype(int)
    assert expected_calibration_error(labels_fresh, cal.predict_proba(fresh)) < 0.06


def test_calibration_round_trips_as_json_and_other_operating_points():
    rng = np.random.default_rng(2)
    labels = np.r_[np.ones(100, int), np.zeros(400, int)]
    scores = np.r_[rng.normal(0.8, 0.1, 100), rng.normal(0.4, 0.15, 400)]
    cal = fit_calibrator(scores, labels)
    again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again.threshold_ == cal.threshold_
    np.testing.assert_allclose(again.predict_proba(scores), cal.predict_proba(scores))
    strict = again.threshold_for(fmr=0.001)
    assert strict > again.threshold_
    assert strict == Calibrator("fmr", target=0.001).fit(scores, labels).threshold_


def test_bootstrap_intervals_contain_point_estimate():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    scores = labels * 0.3 + rng.uniform(0, 1, 500)
    point = binary_metrics(labels, scores, 0.6)
    ci = bootstrap_intervals(labels, scores, 0.6, rounds=300)
    for key in ("precision", "recall", "f1", "roc_auc"):
        assert ci[key][0] <= point[key] <= ci[key][1]


def test_retrieval_metrics_hand_computed(tiny_model):
    from twinnet import PairDataset
    from twinnet.evaluation import retrieval_metrics

    # queries "a" and "b"; gallery x (same as a), y (same as b), z. Identical texts rank first.
    pairs = PairDataset(["apple pie", "blue car", "apple pie"], ["apple pie", "red boat", "zebra"],
                        np.array([1, 1, 0]), left_ids=["a", "b", "a"], right_ids=["x", "y", "z"])
    r = retrieval_metrics(tiny_model, pairs, ks=(1, 3))
    assert r["queries"] == 2 and r["gallery"] == 3
    assert r["recall_at_3"] == 1.0
    # query a finds x first (identical text): rank 1; query b's partner y is at some rank in 1..3
    sims = tiny_model.embed(["blue car"]) @ tiny_model.embed(["apple pie", "red boat", "zebra"]).T
    rank_b = int((sims[0] > sims[0][1]).sum()) + 1
    assert r["mrr"] == pytest.approx((1.0 + 1.0 / rank_b) / 2)
    assert r["recall_at_1"] == pytest.approx((1 + (rank_b == 1)) / 2)
    assert r["map_at_r"] == pytest.approx((1 + (rank_b == 1)) / 2)


def test_auto_probability_map_picks_the_better_one():
    rng = np.random.default_rng(4)
    # a step-shaped truth suits isotonic; a logistic truth suits Platt
    scores = rng.uniform(0, 1, 3000)
    step = (rng.uniform(0, 1, 3000) < np.where(scores > 0.5, 0.95, 0.05)).astype(int)
    assert Calibrator(probability="auto").fit(scores, step).probability_method_ == "isotonic"
    logistic = (rng.uniform(0, 1, 3000) < 1 / (1 + np.exp(-8 * (scores - 0.5)))).astype(int)
    assert Calibrator(probability="auto").fit(scores, logistic).probability_method_ == "platt"


def test_extreme_targets_have_documented_fallbacks():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, 0, 1, 0, 0])
    zero = Calibrator("fmr", target=0.0).fit(scores, labels)
    assert zero.threshold_ > 0.8 and zero.operating_point_["fmr"] == 0.0  # above every different pair
    full = Calibrator("recall", target=1.0).fit(scores, labels)
    assert full.operating_point_["recall"] == 1.0 and 0.6 < full.threshold_ < 0.7
    with pytest.raises(CalibrationError, match="between 0 and 1"):
        Calibrator("fmr", target=1.5).fit(scores, labels)


def test_retrieval_within_one_collection_skips_the_query_itself(tiny_model):
    from twinnet import PairDataset
    from twinnet.evaluation import retrieval_metrics

    # one collection (ids shared by both sides, as image identities and dedup pairs have): "a" and "a2" show one
    # entity, "b" another. Each query's own record is in the gallery and is always its nearest neighbour.
    texts = {"a": "apple pie", "a2": "apple pie with cream", "b": "zebra crossing"}
    left, right = ["a", "a", "a2"], ["a2", "b", "a"]
    pairs = PairDataset([texts[i] for i in left], [texts[i] for i in right], np.array([1, 0, 1]),
                        left_ids=left, right_ids=right)
    r = retrieval_metrics(tiny_model, pairs, ks=(1,))
    # gallery {a, a2, b}; once each query's own record is set aside, its partner is the nearer of the two left
    emb = tiny_model.embed(["apple pie", "apple pie with cream", "zebra crossing"])
    assert emb[0] @ emb[1] > emb[0] @ emb[2] and emb[1] @ emb[0] > emb[1] @ emb[2]
    assert r["queries"] == 2 and r["gallery"] == 3
    assert r["recall_at_1"] == 1.0 and r["mrr"] == 1.0 and r["map_at_r"] == 1.0


def test_retrieval_within_one_collection_counts_the_whole_entity_both_ways():
    from twinnet import PairDataset
    from twinnet.evaluation import retrieval_metrics

    # image folders draw "same" pairs one way only (x1→x2, x1→x3): x2 and x3 are still the same person as each
    # other and as x1, and x2 is a query too. Entity X = {x1, x2, x3}, entity Y = {y1, y2}.
    vectors = {"x1": [1.0, 0.0], "x2": [0.9, 0.1], "x3": [0.8, 0.2], "y1": [0.0, 1.0], "y2": [0.1, 0.9]}

    class FixedEmbeddings:
        def embed(self, records, batch_size=None):
            v = np.asarray([vectors[r] for r in records])
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    left, right = ["x1", "x1", "y1", "x2"], ["x2", "x3", "y2", "y1"]
    pairs = PairDataset(left, right, np.array([1, 1, 1, 0]), left_ids=left, right_ids=right)
    r = retrieval_metrics(FixedEmbeddings(), pairs, ks=(1,))
    assert r["queries"] == 5 and r["gallery"] == 5
    # every record's nearest others are its own entity: x2 ranks x3 then x1 first (both relevant), y2 ranks y1
    assert r["recall_at_1"] == 1.0 and r["map_at_r"] == 1.0 and r["mrr"] == 1.0

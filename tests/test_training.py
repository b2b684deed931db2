"""Trainer: learns on tiny data, is deterministic, encodes each record once, checks its inputs."""

import json

import numpy as np
import pytest

from conftest import make_tiny_encoder, synthetic_pairs
from twinnet import PairDataset, SiameseModel, Trainer
from twinnet.errors import TwinnetError
from twinnet.metrics import best_f1
from twinnet.training import entity_labels, grouped_batches


def _train(tokenizer, loss="online_contrastive+multiple_negatives", epochs=4, seed=0, **kw):
    train, valid = synthetic_pairs(24, seed=0), synthetic_pairs(24, seed=1)
    model = SiameseModel(make_tiny_encoder(tokenizer, seed=0))
    trainer = Trainer(model, loss=loss, epochs=epochs, batch_size=8, learning_rate=1e-3, seed=seed,
                      progress=False, **kw)
    trainer.fit(train, valid)
    return model, trainer, train, valid


def test_training_learns_and_calibrates(tokenizer, tmp_path):
    valid = synthetic_pairs(24, seed=1)
    untrained = SiameseModel(make_tiny_encoder(tokenizer, seed=0))
    before = best_f1(valid.labels, untrained.score_pairs(valid))[0]
    model, trainer, _, _ = _train(tokenizer, log_file=tmp_path / "log.jsonl")
    after = best_f1(valid.labels, model.score_pairs(valid))[0]
    assert before < 0.8 and after >= 0.9
    assert model.calibration_ is not None and model.calibration_.strategy == "max_f1"
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1, 2, 3, 4]
    assert all(np.isfinite(x["train_loss"]) for x in lines[1:])
    assert model.card_["selected_epoch"] == max(range(5), key=lambda e: (lines[e]["valid_best_f1"], -e))


@pytest.mark.parametrize("loss", ["contrastive", "online_contrastive", "multiple_negatives", "triplet"])
def test_each_loss_trains_with_finite_values(tokenizer, loss):
    model, trainer, _, valid = _train(tokenizer, loss=loss, epochs=1)
    assert all(np.isfinite(h["train_loss"]) for h in trainer.history_[1:])
    assert np.isfinite(model.score_pairs(valid)).all()


def test_same_seed_same_model(tokenizer):
    a, _, _, valid = _train(tokenizer, epochs=2, seed=7)
    b, _, _, _ = _train(tokenizer, epochs=2, seed=7)
    assert np.array_equal(a.score_pairs(valid), b.score_pairs(valid))
    assert a.calibration_.threshold_ == b.calibration_.threshold_


def test_each_distinct_record_encoded_once_per_batch(tokenizer):
    model, trainer, train, _ = _train(tokenizer, epochs=1)
    epoch = trainer.history_[1]
    assert epoch["pairs"] == len(train)
    distinct_per_batch = 0
    texts_l, texts_r = train.texts(model.serializer)
    for index in grouped_batches(train, 8, np.random.default_rng(0)):
        distinct_per_batch += len({texts_l[i] for i in index} | {texts_r[i] for i in index})
    assert epoch["records_encoded"] == distinct_per_batch < 2 * len(train)


def test_grouped_batches_keep_left_record_pairs_together():
    pairs = PairDataset(["a", "a", "a", "b", "c"], ["x", "y", "z", "x", "y"], np.array([1, 0, 0, 1, 0]),
                        left_ids=["a", "a", "a", "b", "c"], right_ids=["x", "y", "z", "x", "y"])
    batches = list(grouped_batches(pairs, 3, np.random.default_rng(0)))
    assert sorted(np.concatenate(batches).tolist()) == [0, 1, 2, 3, 4]
    assert any(sorted(b.tolist()) == [0, 1, 2] for b in batches)
    groups = entity_labels(pairs)
    assert groups["a"] == groups["x"] == groups["b"] and groups["y"] != groups["a"]


def test_graph_order_batches_left_records_that_share_candidates():
    # 6 blocks; in each, 4 left records are each paired with the same 4 right records (16 pairs per block)
    left, right = [], []
    for block in range(6):
        for a in range(4):
            for b in range(4):
                left.append(f"L{block}.{a}")
                right.append(f"R{block}.{b}")
    rng_seed = 3
    graph = list(grouped_batches(left, 16, np.random.default_rng(rng_seed), right_ids=right))
    shuffled = list(grouped_batches(left, 16, np.random.default_rng(rng_seed)))
    for batches in (graph, shuffled):
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(left)))  # every pair once
        for b in batches:  # a left record's pairs stay together
            assert all(sum(left[i] == key for i in b) == 4 for key in {left[i] for i in b})

    def encoded(batches):
        return sum(len({left[i] for i in b} | {right[i] for i in b}) for b in batches)

    assert encoded(graph) == 6 * 8  # each batch is exactly one block: 4 left + 4 right records
    assert encoded(shuffled) > encoded(graph)
    again = list(grouped_batches(left, 16, np.random.default_rng(rng_seed), right_ids=right))
    assert [b.tolist() for b in graph] == [b.tolist() for b in again]  # seeded


def test_trainer_graph_order_encodes_fewer_records_and_refuses_unknown_orders(tokenizer):
    train = synthetic_pairs(24)
    model = SiameseModel(make_tiny_encoder(tokenizer))
    with pytest.raises(TwinnetError, match="batch_order"):
        Trainer(model, epochs=1, progress=False, batch_order="random").fit(train)
    history = {}
    for order in ("shuffle", "graph"):
        trainer = Trainer(SiameseModel(make_tiny_encoder(tokenizer)), epochs=1, batch_size=8, progress=False,
                          batch_order=order, select_best=False)
        trainer.fit(train)
        history[order] = trainer.history_[-1]
    assert history["graph"]["pairs"] == history["shuffle"]["pairs"] == len(train)
    assert history["graph"]["records_encoded"] <= history["shuffle"]["records_encoded"]


def test_single_class_validation_is_refused(tokenizer):
    train = synthetic_pairs(8)
    valid = train.subset(np.nonzero(train.labels == 0)[0])
    model = SiameseModel(make_tiny_encoder(tokenizer))
    with pytest.raises(TwinnetError, match="only different"):
        Trainer(model, epochs=1, progress=False).fit(train, valid)


def test_epoch_batches_add_positive_only_batches():
    from twinnet.training import epoch_batches

    pairs = synthetic_pairs(24)
    batches = epoch_batches(pairs, 8, 6, np.random.default_rng(0))
    grouped = epoch_batches(pairs, 8, 0, np.random.default_rng(0))
    extra = len(batches) - len(grouped)
    assert extra == 4  # 24 positives in batches of 6
    counts = np.bincount(np.concatenate(batches), minlength=len(pairs))
    assert (counts[pairs.labels == 1] == 2).all() and (counts[pairs.labels == 0] == 1).all()
    assert sum(bool((pairs.labels[b] == 1).all()) and len(b) == 6 for b in batches) >= 4


def test_mined_negatives_are_other_entities_below_the_positive_by_the_margin():
    from twinnet.training import mine_hard_negatives

    # rows 0, 1 are left records; 2..6 right records. Pairs: (0,2) same, (1,3) same, (0,4) labelled different.
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.436], [0.1, 0.995], [0.8, 0.6], [0.95, 0.312], [0.6, 0.8]])
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    left, right = np.array([0, 1, 0]), np.array([2, 3, 4])
    labels = np.array([1, 1, 0])
    entity = np.array([0, 1, 0, 1, 2, 3, 4])
    anchors, negatives = mine_hard_negatives(emb, left, right, labels, entity, per_anchor=2, k=5, margin=0.05)
    pairs = set(zip(anchors.tolist(), negatives.tolist()))
    # right-side candidates are only records that appear on the right (2, 3, 4): 4 is already labelled for 0,
    # 3 is anchor 1's own entity; so anchor 0 may take 3 (0.1 < 0.9 - 0.05), anchor 1 may take 4 and 2
    assert pairs == {(0, 3), (1, 4), (1, 2)}
    # a candidate scoring as high as the anchor's positive is a likely false negative: dropped
    close = emb.copy()
    close[4] = close[3]  # record 4 now looks exactly like anchor 1's match
    anchors, negatives = mine_hard_negatives(close, left, right, labels, entity, per_anchor=2, k=5, margin=0.05)
    assert (1, 4) not in set(zip(anchors.tolist(), negatives.tolist()))


def test_training_with_hard_negatives_adds_pairs_and_stays_deterministic(tokenizer):
    # margin -1 keeps every candidate: the untrained tiny model scores negatives as high as positives
    a, trainer, train, valid = _train(tokenizer, epochs=2, hard_negatives=1, mining_k=5, mining_margin=-1.0)
    mined = [h["mined_negatives"] for h in trainer.history_[1:]]
    assert all(m > 0 for m in mined)
    assert trainer.history_[1]["pairs"] == len(train) + mined[0]
    b, _, _, _ = _train(tokenizer, epochs=2, hard_negatives=1, mining_k=5, mining_margin=-1.0)
    assert np.array_equal(a.score_pairs(valid), b.score_pairs(valid))

"""Trainer recipes: entity batches, a second pair stage, graded pairs, augmentation, gradient accumulation,
mixed precision, checkpoints that resume to the uninterrupted result, TensorBoard when installed."""

import json
import logging

import numpy as np
import pytest

from conftest import make_tiny_encoder, synthetic_pairs
from twinnet import PairDataset, SiameseModel, Trainer
from twinnet.errors import TwinnetError
from twinnet.metrics import best_f1
from twinnet.training import m_per_class_batches


def _model(tokenizer, seed=0):
    return SiameseModel(make_tiny_encoder(tokenizer, seed=seed))


def _fit(tokenizer, train=None, valid=None, model_seed=0, **kw):
    train = train if train is not None else synthetic_pairs(24, seed=0)
    valid = valid if valid is not None else synthetic_pairs(24, seed=1)
    model = _model(tokenizer, model_seed)
    settings = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "seed": 0, "progress": False, **kw}
    trainer = Trainer(model, **settings)
    trainer.fit(train, valid)
    return model, trainer, valid


def graded_pairs(n: int = 24, seed: int = 0) -> PairDataset:
    """Sentence pairs graded 0-5: same code = 5, same brand and kind but another code = 2, nothing shared = 0."""
    same = synthetic_pairs(n, seed=seed)
    left, right, scores = [], [], []
    for i in range(0, len(same), 2):
        left += [same.left[i], same.left[i], same.left[i]]
        right += [same.right[i], same.right[i + 1], same.right[(i + 7) % len(same)]]
        scores += [5.0, 2.0, 0.0]
    return PairDataset(left, right, scores=np.asarray(scores), name="graded")


# ---------------------------------------------------------------------------------------------- entity batches
def test_m_per_class_batches_hold_every_record_once_and_at_most_m_per_entity():
    entity = np.array([0, 0, 0, 0, 0, 1, 1, 2, 3, 3, 3])
    for seed in range(5):
        batches = m_per_class_batches(entity, 2, 4, np.random.default_rng(seed))
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(entity)))
        for batch in batches:
            assert len(batch) <= 4
            assert np.bincount(entity[batch]).max() <= 2
    again = m_per_class_batches(entity, 2, 4, np.random.default_rng(0))
    assert [b.tolist() for b in again] == [b.tolist() for b in m_per_class_batches(entity, 2, 4, np.random.default_rng(0))]
    with pytest.raises(TwinnetError, match="at least 2"):
        m_per_class_batches(entity, 1, 4, np.random.default_rng(0))


@pytest.mark.parametrize("loss", ["supcon", "multi_similarity", "batch_hard_triplet", "semi_hard_triplet"])
def test_entity_batches_train_each_group_loss(tokenizer, loss):
    model, trainer, valid = _fit(tokenizer, loss=loss, sampler="m_per_class", m=2, epochs=1)
    epoch = trainer.history_[1]
    assert epoch["stage"] == "entities" and np.isfinite(epoch["train_loss"])
    # every distinct training record is encoded exactly once per entity epoch (no pairs are listed)
    assert epoch["records_encoded"] == trainer.model.card_["train"]["distinct_texts"] and epoch["pairs"] == 0
    assert np.isfinite(model.score_pairs(valid)).all()


def test_supcon_entity_training_learns_then_pair_stage(tokenizer):
    valid = synthetic_pairs(24, seed=1)
    before = best_f1(valid.labels, _model(tokenizer).score_pairs(valid))[0]
    model, trainer, _ = _fit(tokenizer, loss="supcon", sampler="m_per_class", m=2, epochs=4, pair_stage_epochs=1,
                             pair_stage_loss="online_contrastive")
    assert [h.get("stage") for h in trainer.history_[1:]] == ["entities"] * 4 + ["pairs"]
    assert trainer.history_[-1]["pairs"] == 48
    after = best_f1(valid.labels, model.score_pairs(valid))[0]
    assert before < 0.8 and after >= 0.9
    assert model.card_["settings"]["pair_stage_loss"] == "online_contrastive"


def test_sampler_and_loss_checks(tokenizer):
    with pytest.raises(TwinnetError, match="sampler must be one of"):
        _fit(tokenizer, sampler="random")
    with pytest.raises(TwinnetError, match="between 2 and batch_size"):
        _fit(tokenizer, sampler="m_per_class", m=1)
    with pytest.raises(TwinnetError, match="graded pairs"):
        _fit(tokenizer, loss="cosent")


# ---------------------------------------------------------------------------------------------- graded pairs
def test_graded_pairs_train_with_cosent_and_select_on_spearman(tokenizer, tmp_path):
    from scipy.stats import spearmanr

    train, valid = graded_pairs(24, seed=0), graded_pairs(24, seed=1)
    before = spearmanr(_model(tokenizer).score_pairs(valid), valid.scores).statistic
    model, trainer, _ = _fit(tokenizer, train, valid, loss="cosent", epochs=3)
    after = spearmanr(model.score_pairs(valid), valid.scores).statistic
    assert after > before + 0.1 and after > 0.8  # untrained: 0.70 (surface overlap); trained: 0.86
    values = [h["valid_spearman"] for h in trainer.history_]
    assert model.card_["selected_epoch"] == int(np.argmax(values))
    assert model.calibration_ is None  # no threshold for graded similarity
    model.save(tmp_path / "m")
    assert not (tmp_path / "m" / "calibration.json").exists()
    with pytest.raises(TwinnetError, match="cosent or cosine_regression"):
        _fit(tokenizer, train, valid, loss="online_contrastive")
    with pytest.raises(TwinnetError, match="same kind"):
        _fit(tokenizer, train, synthetic_pairs(8), loss="cosent")


def test_cosine_regression_trains_finite(tokenizer):
    model, trainer, valid = _fit(tokenizer, graded_pairs(12), graded_pairs(12, seed=1), loss="cosine_regression",
                                 epochs=1)
    assert np.isfinite(trainer.history_[1]["train_loss"])


# ---------------------------------------------------------------------------------------------- augmentation
def test_augmentation_is_seeded_and_changes_training(tokenizer):
    spec = "token_deletion=0.2,span_shuffle=0.3,value_swap=0.5"
    a, _, valid = _fit(tokenizer, augment=spec)
    b, _, _ = _fit(tokenizer, augment=spec)
    plain, _, _ = _fit(tokenizer)
    assert np.array_equal(a.score_pairs(valid), b.score_pairs(valid))
    assert not np.array_equal(a.score_pairs(valid), plain.score_pairs(valid))
    assert a.card_["settings"]["augment"]["value_swap"] == 0.5


def test_augmented_texts_in_batches(tokenizer, monkeypatch):
    """The encoder sees edited texts: with token deletion 1.0 every training input is a single token."""
    model = _model(tokenizer)
    seen = []
    original = model.encoder.prepare

    def spy(items):
        seen.append(list(items))
        return original(items)

    monkeypatch.setattr(model.encoder, "prepare", spy)
    trainer = Trainer(model, epochs=1, batch_size=8, augment={"token_deletion": 1.0}, progress=False,
                      select_best=False)
    trainer.fit(synthetic_pairs(8))
    # the first call prepares the unedited texts once; then one call per batch; later calls embed for checks
    batch_inputs = seen[1: 1 + trainer.history_[0]["optimizer_steps"]]
    assert len(batch_inputs) == 2 and all(len(text.split()) == 1 for batch in batch_inputs for text in batch)
    assert sum(len(batch) for batch in batch_inputs) == trainer.history_[0]["records_encoded"]


# ---------------------------------------------------------------------------------------------- engineering
def test_gradient_accumulation_steps_the_optimizer_less_often(tokenizer):
    _, one, _ = _fit(tokenizer, epochs=1)
    _, three, _ = _fit(tokenizer, epochs=1, accumulation_steps=3)
    batches = one.history_[1]["optimizer_steps"]
    assert batches > 3
    assert three.history_[1]["optimizer_steps"] == -(-batches // 3)
    assert three.history_[1]["pairs"] == one.history_[1]["pairs"]


def test_mixed_precision_choices(tokenizer):
    model, trainer, valid = _fit(tokenizer, epochs=1, mixed_precision="bf16")  # bf16 autocast also runs on CPU
    assert np.isfinite(trainer.history_[1]["train_loss"]) and np.isfinite(model.score_pairs(valid)).all()
    with pytest.raises(TwinnetError, match="needs a CUDA GPU"):
        _fit(tokenizer, epochs=1, mixed_precision="fp16", device="cpu")
    with pytest.raises(TwinnetError, match="mixed_precision must be one of"):
        _fit(tokenizer, epochs=1, mixed_precision="half")


def _comparable(history):
    timing = {"seconds", "pairs_per_s", "records_per_s"}
    return [{k: v for k, v in h.items() if k not in timing} for h in history]


@pytest.mark.parametrize("recipe", [
    {},
    {"sampler": "m_per_class", "m": 2, "loss": "supcon", "pair_stage_epochs": 1, "augment": "token_deletion=0.2",
     "accumulation_steps": 2},
], ids=["pairs", "entities+augment+accumulation"])
def test_resume_gives_the_uninterrupted_result(tokenizer, tmp_path, recipe):
    epochs = 2 if recipe.get("pair_stage_epochs") else 3
    checkpoints = tmp_path / "ckpt"
    full, full_trainer, valid = _fit(tokenizer, epochs=epochs, checkpoint_dir=checkpoints, keep_checkpoints=None,
                                     **recipe)
    files = sorted(p.name for p in (checkpoints / "epoch-1").iterdir())
    assert files == ["best_model.safetensors", "loss.safetensors", "model.safetensors", "optimizer.safetensors",
                     "random_states.safetensors", "trainer_state.json"]  # no pickle anywhere
    # a model initialised differently: everything must come from the checkpoint
    resumed, resumed_trainer, _ = _fit(tokenizer, epochs=epochs, model_seed=5, resume_from=checkpoints / "epoch-1",
                                       **recipe)
    assert np.array_equal(full.score_pairs(valid), resumed.score_pairs(valid))
    assert _comparable(full_trainer.history_) == _comparable(resumed_trainer.history_)
    assert full.calibration_.threshold_ == resumed.calibration_.threshold_
    assert resumed.card_["selected_epoch"] == full.card_["selected_epoch"]


def test_resume_refuses_other_settings_and_keeps_newest_checkpoints(tokenizer, tmp_path):
    _fit(tokenizer, epochs=3, checkpoint_dir=tmp_path / "ckpt", keep_checkpoints=2)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch-2", "epoch-3"]
    with pytest.raises(TwinnetError, match="batch_size=8") as info:
        _fit(tokenizer, epochs=4, batch_size=16, resume_from=tmp_path / "ckpt")
    assert "trainer_state.json" in str(info.value)
    with pytest.raises(TwinnetError, match="other training pairs"):
        _fit(tokenizer, train=synthetic_pairs(20), epochs=4, resume_from=tmp_path / "ckpt")
    with pytest.raises(TwinnetError, match="no checkpoint here"):
        _fit(tokenizer, resume_from=tmp_path)


def test_jsonl_log_and_tensorboard_when_installed(tokenizer, tmp_path, caplog):
    import importlib.util

    with caplog.at_level(logging.WARNING, logger="twinnet"):
        _fit(tokenizer, epochs=1, log_file=tmp_path / "log.jsonl", tensorboard_dir=tmp_path / "tb")
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1]
    if importlib.util.find_spec("tensorboard") is None:
        assert "tensorboard is not installed" in caplog.text
    else:
        assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_length_sorted_chunks_give_the_same_training(tokenizer):
    """Encoding a batch in length-sorted chunks changes only the padding: with dropout off the same model comes out
    (to float rounding), and each chunk is padded only to its own longest input."""
    import torch

    def without_dropout(model):
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        return model

    chunked, one_pass = without_dropout(_model(tokenizer)), without_dropout(_model(tokenizer))
    shapes = []
    collate = chunked.encoder.collate

    def record_shapes(items):
        batch = collate(items)
        if chunked.training:
            shapes.append((tuple(batch["input_ids"].shape), [len(i.ids) for i in items]))
        return batch

    chunked.encoder.collate = record_shapes
    for model, chunk in ((chunked, 3), (one_pass, 0)):
        Trainer(model, epochs=2, batch_size=8, learning_rate=1e-3, seed=0, progress=False, encode_chunk_size=chunk,
                select_best=False).fit(synthetic_pairs(24, seed=0))
    assert shapes and all(rows <= 3 and width == max(lengths) for (rows, width), lengths in shapes)
    valid = synthetic_pairs(24, seed=1)
    np.testing.assert_allclose(chunked.score_pairs(valid), one_pass.score_pairs(valid), atol=1e-5)

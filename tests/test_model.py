"""SiameseModel: batch independence, eval mode, truncation, bad items, save/load (cases C07–C12)."""

import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_encoder
from twinnet import SiameseModel
from twinnet.data import RecordSerializer
from twinnet.errors import TwinnetError


def test_c07_batch_independence(tiny_model):
    texts = ["hello", "goodbye", "you say I say"]
    together = tiny_model.embed(texts, batch_size=32)
    alone = tiny_model.embed(["hello"], batch_size=1)
    one_by_one = tiny_model.embed(texts, batch_size=1)
    assert np.abs(together[0] - alone[0]).max() <= 1e-5
    assert np.abs(together - one_by_one).max() <= 1e-5
    query = together[0]
    assert np.argsort(-(together @ query)).tolist() == np.argsort(-(one_by_one @ query)).tolist()


def test_c08_eval_mode_after_training(tiny_model):
    tiny_model.train()  # as the trainer leaves the module; dropout is active in train mode
    first = tiny_model.embed(["a b c"])
    second = tiny_model.embed(["a b c"])
    assert np.array_equal(first, second)
    assert tiny_model.training  # embed restores the caller's mode


def test_c09_truncation_is_visible(tokenizer):
    model = SiameseModel(make_tiny_encoder(tokenizer, max_length=8))
    text = " ".join(f"word{i}" for i in range(20))
    long_emb = model.embed([text])
    report = model.last_truncation
    assert report.truncated == 1 and report.inputs == 1
    full_tokens = len(tokenizer(text)["input_ids"])
    assert report.tokens_cut == full_tokens - 8
    first_ids = tokenizer(text, truncation=True, max_length=8)["input_ids"]
    prefix = tokenizer.decode(first_ids[1:-1])
    short_emb = model.embed([prefix])
    assert model.last_truncation.truncated == 0
    assert np.abs(long_emb - short_emb).max() <= 1e-5


def test_c10_missing_value_names_the_item(tiny_model):
    with pytest.raises(TwinnetError, match="item 1 is missing"):
        tiny_model.embed(["hello", float("nan")])
    with pytest.raises(TwinnetError, match="item 0 is missing"):
        tiny_model.embed([None, "x"])


def test_c11_empty_text_is_finite(tiny_model):
    emb = tiny_model.embed(["", "   ", "text"])
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-6)  # whitespace-only is the empty text


def test_c12_settings_survive_save_load(tokenizer, tmp_path):
    model = SiameseModel(make_tiny_encoder(tokenizer, pooling="max"), normalize=True,
                         serializer=RecordSerializer(attributes=["title", "brand"], style="colval"))
    texts = ["alpha", "beta gamma", "delta"]
    before = model.embed(texts)
    model.save(tmp_path / "m")
    loaded = SiameseModel.load(tmp_path / "m")
    assert loaded.encoder.pooling == "max" and loaded.normalize is True
    assert loaded.serializer == model.serializer
    after = loaded.embed(texts)
    assert np.abs(before - after).max() <= 1e-6
    np.testing.assert_allclose(np.linalg.norm(after, axis=1), 1.0, atol=1e-6)
    raw = loaded.embed(texts, normalize=False)  # the conflicting request is honoured
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), after, atol=1e-6)


def test_save_load_round_trip_scores_and_folder_contents(tiny_model, tmp_path):
    from twinnet.calibration import fit_calibrator

    left = ["sony tv 40", "lg fridge", "bose speaker", "canon camera"]
    right = ["sony television 40in", "samsung fridge", "bose speakers", "nikon camera"]
    scores = tiny_model.score(left, right)
    tiny_model.calibration_ = fit_calibrator(scores, np.array([1, 0, 1, 0]))
    folder = tiny_model.save(tmp_path / "model")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "calibration.json", "README.md", "tokenizer.json",
            "modules.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    config = json.loads((folder / "config.json").read_text())["twinnet"]
    assert config["encoder"]["pooling"] == "mean" and config["similarity"] == "cosine"
    loaded = SiameseModel.load(folder)
    assert np.abs(loaded.score(left, right) - scores).max() <= 1e-6
    assert loaded.calibration_.threshold_ == tiny_model.calibration_.threshold_
    d = loaded.verify(left[0], right[0])
    assert d.same == (d.score >= loaded.calibration_.threshold_) and 0 <= d.probability <= 1
    assert "threshold" in (folder / "README.md").read_text()


def test_failed_save_keeps_previous_folder(tiny_model, tmp_path, monkeypatch):
    folder = tiny_model.save(tmp_path / "model")
    before = (folder / "model.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("twinnet.modelcard.render_model_card", broken)
    with torch.no_grad():
        next(tiny_model.parameters()).add_(1.0)
    with pytest.raises(OSError):
        tiny_model.save(folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_load_rejects_plain_encoder_folder(tiny_base_folder):
    with pytest.raises(TwinnetError, match="plain encoder"):
        SiameseModel.load(tiny_base_folder)


def test_verify_without_threshold_is_explained(tiny_model):
    with pytest.raises(TwinnetError, match="no fitted threshold"):
        tiny_model.verify("a", "b")
    assert tiny_model.verify("a", "b", threshold=0.5).score == pytest.approx(tiny_model.score(["a"], ["b"])[0])


def test_records_are_serialised_by_the_model(tiny_model):
    tiny_model.serializer = RecordSerializer(attributes=["name", "price"])
    as_record = tiny_model.embed([{"name": "sony tv", "price": 99.0, "id": 3}])
    as_text = tiny_model.embed(["sony tv 99.0"])
    np.testing.assert_allclose(as_record, as_text, atol=1e-6)
    odd = tiny_model.embed(["caf\u00e9 \ud800 \u200b\U0001F600"])  # lone surrogate, zero-width, emoji
    assert np.isfinite(odd).all()


def test_pandas_missing_values_and_sides_are_named(tiny_model):
    import pandas as pd

    with pytest.raises(TwinnetError, match="item 1 is missing"):
        tiny_model.embed(["hello", pd.NA])
    with pytest.raises(TwinnetError, match="item 1 is missing"):
        tiny_model.embed(pd.Series(["hello", None], dtype="string").tolist())
    with pytest.raises(TwinnetError, match="right item 1 is missing"):
        tiny_model.score(["hello", "x"], ["y", float("nan")])
    with pytest.raises(TwinnetError, match="right record is missing"):
        tiny_model.verify("hello", float("nan"), threshold=0.5)


def test_unnormalised_model_folder_matches_sentence_transformers(tokenizer, tmp_path):
    model = SiameseModel(make_tiny_encoder(tokenizer), normalize=False)
    folder = model.save(tmp_path / "raw")
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling"] and not (folder / "2_Normalize").exists()


def test_c11_verify_refuses_an_empty_record_as_pair_files_and_the_service_do(tiny_model):
    tiny_model.calibration_ = None
    with pytest.raises(TwinnetError, match="right record is empty"):
        tiny_model.verify("sony tv", "   ")
    with pytest.raises(TwinnetError, match="left item 1 is empty"):
        tiny_model.verify(["a", {"title": ""}], ["b", "c"])
    assert tiny_model.verify("sony tv", "sony tv", threshold=0.5).same  # non-empty pairs still decide


def test_length_batches_cut_where_padding_would_waste_and_keep_every_row():
    from twinnet.scoring import length_batches

    costs = [40, 12, 12, 13, 41, 12, 39, 13]
    batches = length_batches(costs, batch_size=64)
    # short rows (12-13 tokens) never share a batch with the long ones (39-41): that would pad 5 rows to 41
    assert [sorted(costs[i] for i in b) for b in batches] == [[12, 12, 12, 13, 13], [39, 40, 41]]
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(costs)))
    # the row cap still holds when every row has the same length
    assert [len(b) for b in length_batches([20] * 10, batch_size=4)] == [4, 4, 2]
    assert length_batches([], batch_size=4) == []


def test_length_batches_give_the_same_embeddings_as_one_pass(tiny_model):
    texts = ["a", "a much longer product title with many words in it 123", "b c", "tv", "another long title here ok"]
    batched = tiny_model.embed(texts, batch_size=64)
    single = np.stack([tiny_model.embed([t])[0] for t in texts])
    assert np.abs(batched - single).max() <= 1e-5


def test_bf16_inference_is_close_to_fp32_and_refused_without_native_support(tiny_model, monkeypatch):
    import twinnet.model as model_module

    texts = ["sony camera xr100", "lg television kd250 from lg", ""]
    reference = tiny_model.embed(texts)
    with pytest.raises(TwinnetError, match="fp32 or bf16"):
        tiny_model.set_inference_precision("fp16")
    monkeypatch.setattr(model_module, "bf16_cpu_supported", lambda: False)
    with pytest.raises(TwinnetError, match="no native bfloat16"):
        tiny_model.set_inference_precision("bf16")
    assert tiny_model.inference_precision == "fp32"
    monkeypatch.setattr(model_module, "bf16_cpu_supported", lambda: True)  # emulated is slow but still correct
    low = tiny_model.set_inference_precision("bf16").embed(texts)
    assert low.dtype == np.float32
    assert float((low * reference).sum(1).min()) >= 0.99
    assert not np.array_equal(low, reference)  # the autocast really ran
    assert tiny_model.set_inference_precision("fp32").embed(texts) == pytest.approx(reference, abs=1e-6)

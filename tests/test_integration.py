"""Integration: the real pretrained model on real Abt-Buy pairs (loaded once per session)."""

import numpy as np
import pytest

from conftest import require_shared_data
from twinnet import SiameseModel, Trainer, datasets
from twinnet.data import RecordSerializer
from twinnet.evaluation import evaluate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def abt_buy():
    require_shared_data("er_deepmatcher_tables", "Abt-Buy", "train.csv")
    return datasets.load_pairs("abt-buy")


@pytest.fixture(scope="module")
def trained_on_abt_buy(abt_buy, real_model_path, tmp_path_factory):
    train, valid, _ = abt_buy
    rng = np.random.default_rng(0)
    # a few steps: 96 training pairs (all positives among them kept), 300 validation pairs
    small_train = train.subset(np.sort(rng.choice(len(train), 96, replace=False)))
    small_valid = valid.subset(np.sort(rng.choice(len(valid), 300, replace=False)))
    model = SiameseModel.for_text(real_model_path, max_length=32, serializer=RecordSerializer(attributes=["name"]))
    Trainer(model, epochs=1, batch_size=16, progress=False).fit(small_train, small_valid)
    folder = model.save(tmp_path_factory.mktemp("abt") / "model")
    return model, folder, small_valid


def test_registry_finds_abt_buy(abt_buy):
    train, valid, test = abt_buy
    assert (len(train), len(valid), len(test)) == (5743, 1916, 1916)
    assert int(train.labels.sum()) == 616 and int(test.labels.sum()) == 206


def test_registry_reads_the_ditto_layout_of_wdc_medium():
    require_shared_data("wdc_lspc_ditto", "computers", "train.txt.medium")
    train, valid, test = datasets.load_pairs("wdc-computers-medium")
    # counts and positives as SOURCE.md lists them
    assert (len(train), len(valid), len(test)) == (6332, 1567, 1098)
    assert (int(train.labels.sum()), int(valid.labels.sum()), int(test.labels.sum())) == (1378, 341, 299)
    assert set(train.left[0]) == {"title"} and train.name == "wdc-computers-medium/train"
    # one title is one record wherever it appears: ids are hashes of the record
    from twinnet.data.pairs import record_id

    assert train.left_ids[0] == record_id(train.left[0])


def test_real_model_save_load_verify(trained_on_abt_buy, abt_buy):
    model, folder, small_valid = trained_on_abt_buy
    _, _, test = abt_buy
    loaded = SiameseModel.load(folder)
    pairs = test.subset(np.arange(40))
    np.testing.assert_allclose(loaded.score_pairs(pairs), model.score_pairs(pairs), atol=1e-6)
    decisions = loaded.verify(pairs.left, pairs.right)
    threshold = loaded.calibration_.threshold_
    assert [d.same for d in decisions] == [d.score >= threshold for d in decisions]
    assert all(0.0 <= d.probability <= 1.0 for d in decisions)
    # the folder also loads in sentence-transformers and embeds identically
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu")
    texts = [loaded.serializer(r) for r in pairs.left[:5]]
    np.testing.assert_allclose(st.encode(texts), loaded.embed(texts), atol=1e-5)


def test_real_model_evaluation_uses_stored_threshold(trained_on_abt_buy, abt_buy):
    model, _, _ = trained_on_abt_buy
    _, _, test = abt_buy
    sample = test.subset(np.arange(0, len(test), 4))
    report = evaluate(model, sample, bootstrap=50)
    assert report.metrics["threshold"] == model.calibration_.threshold_
    assert report.metrics["roc_auc"] > 0.8  # all-MiniLM-L6-v2 names: clearly better than chance
    assert {"seen", "unseen"} >= set(report.subsets)

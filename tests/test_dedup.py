"""Blocking, clustering, collection metrics, the dedup/link pipelines and their command lines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from twinnet.cli import app
from twinnet.data.synth import synthesize_products
from twinnet.dedup import Candidates, block, cluster, deduplicate_embeddings, link_embeddings
from twinnet.errors import TwinnetError
from twinnet.metrics import cluster_metrics, pair_set_metrics

runner = CliRunner()


def _chain() -> Candidates:
    # A~B 0.95 and B~C 0.90 are matches; A~C is the weak link (below a threshold of 0.8, so not kept)
    return Candidates(np.array([0, 1]), np.array([1, 2]), np.array([0.95, 0.90], dtype=np.float32))


def test_a_chain_is_split_by_the_default_clustering_and_merged_by_components():
    assert cluster(3, _chain(), "centre").tolist() == [0, 0, 1]
    assert cluster(3, _chain(), "components").tolist() == [0, 0, 0]
    assert cluster(3, _chain(), "one_to_one").tolist() == [0, 0, 1]


def test_centre_clustering_takes_a_direct_match_with_the_centre():
    # a star around 0: every record matches the centre directly, so all join it
    star = Candidates(np.array([0, 0, 0]), np.array([1, 2, 3]), np.array([0.9, 0.85, 0.8], dtype=np.float32))
    assert cluster(4, star, "centre").tolist() == [0, 0, 0, 0]
    assert cluster(5, star, "centre").tolist() == [0, 0, 0, 0, 1]  # record 4 has no match: its own cluster


def test_clustering_of_embeddings_end_to_end():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 8))
    x = np.vstack([base, base[:10] + 0.02 * rng.normal(size=(10, 8))])
    result = deduplicate_embeddings(x, [f"r{i}" for i in range(50)], threshold=0.98, k=5)
    assert result.stats["kept_pairs"] == 10 and result.stats["clusters"] == 40
    gold = list(range(40)) + list(range(10))
    assert cluster_metrics(result.clusters["cluster"], gold)["pairwise_f1"] == 1.0
    assert set(result.pairs.columns) == {"left_id", "right_id", "score", "probability", "in_cluster"}


def test_blocking_lists_each_unordered_pair_once_and_k_beyond_size():
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    pairs = block(x, k=50)
    assert len(pairs) == 15 and (pairs.left < pairs.right).all()
    expected = np.sum((x / np.linalg.norm(x, axis=1, keepdims=True))[pairs.left] *
                      (x / np.linalg.norm(x, axis=1, keepdims=True))[pairs.right], axis=1)
    np.testing.assert_allclose(pairs.scores, expected, atol=1e-6)
    assert len(block(np.zeros((0, 4), dtype=np.float32), k=3)) == 0


def test_ivf_blocking_recall_on_synthetic_clusters():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(3000, 32))
    x = np.vstack([centres, centres + 0.05 * rng.normal(size=centres.shape)]).astype(np.float32)
    pairs = block(x, k=2, index_kind="ivf", nprobe=8)
    found = pair_set_metrics(zip(pairs.left, pairs.right), [(i, i + 3000) for i in range(3000)])
    assert found["recall"] >= 0.99


def test_link_with_one_to_one():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(30, 8))
    b = np.vstack([a[:20] + 0.01 * rng.normal(size=(20, 8)), rng.normal(size=(5, 8))])
    result = link_embeddings(a, [f"a{i}" for i in range(30)], b, [f"b{i}" for i in range(25)], threshold=0.95,
                             k=3, clustering="one_to_one")
    metrics = pair_set_metrics(zip(result.pairs.left_id, result.pairs.right_id),
                               [(f"a{i}", f"b{i}") for i in range(20)])
    assert metrics["f1"] == 1.0
    assert set(result.clusters["source"]) == {"A", "B"} and len(result.clusters) == 55


def test_cluster_metrics_by_hand():
    # predicted {0,1},{2},{3}; gold {0,1},{2,3}: 1 true pair of 1 predicted and 2 gold
    m = cluster_metrics([0, 0, 1, 2], [0, 0, 1, 1])
    assert m["pairwise_precision"] == 1.0 and m["pairwise_recall"] == 0.5
    assert m["bcubed_precision"] == 1.0 and m["bcubed_recall"] == pytest.approx(0.75)
    merged = cluster_metrics([0, 0, 0, 0], [0, 0, 1, 1])
    assert merged["pairwise_precision"] == pytest.approx(2 / 6) and merged["pairwise_recall"] == 1.0
    assert pair_set_metrics([("a", "b"), ("c", "d")], [("b", "a")])["precision"] == 0.5


def test_duplicate_ids_and_bad_settings_are_refused():
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(TwinnetError, match="appears twice"):
        deduplicate_embeddings(x, ["a", "b", "a"], threshold=0.5)
    with pytest.raises(TwinnetError, match="clustering must be"):
        deduplicate_embeddings(x, ["a", "b", "c"], threshold=0.5, clustering="single")
    with pytest.raises(TwinnetError, match="k must be"):
        block(x, k=0)


def test_synthetic_products_are_seeded_and_hold_duplicates():
    first = synthesize_products(300, duplicate_fraction=0.3, seed=4)
    assert first.equals(synthesize_products(300, duplicate_fraction=0.3, seed=4))
    assert len(first) == 300 and first["id"].is_unique
    assert first["entity_id"].nunique() == 210
    assert not first.equals(synthesize_products(300, duplicate_fraction=0.3, seed=5))


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def calibrated_folder(tmp_path_factory, tokenizer):
    from conftest import make_tiny_encoder, synthetic_pairs
    from twinnet.model import SiameseModel

    model = SiameseModel(make_tiny_encoder(tokenizer))
    pairs = synthetic_pairs(12)
    model.calibrate(pairs)
    return model.save(tmp_path_factory.mktemp("dedup") / "model")


def test_dedup_and_index_commands(tmp_path, calibrated_folder):
    table = tmp_path / "products.csv"
    synthesize_products(120, seed=0).to_csv(table, index=False)
    result = runner.invoke(app, ["dedup", str(calibrated_folder), str(table), "--ignore", "entity_id",
                                 "-o", str(tmp_path / "clusters.csv"), "--pairs", str(tmp_path / "pairs.parquet"),
                                 "--threshold", "0.99", "-k", "5"])
    assert result.exit_code == 0, result.output
    clusters = pd.read_csv(tmp_path / "clusters.csv", dtype=str)
    assert len(clusters) == 120 and set(clusters.columns) == {"id", "cluster"}
    assert (pd.read_parquet(tmp_path / "pairs.parquet")["score"] >= 0.99).all()

    result = runner.invoke(app, ["index", "build", str(calibrated_folder), str(table), "-o", str(tmp_path / "idx"),
                                 "--ignore", "entity_id"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["index", "search", str(tmp_path / "idx"), "--id", "r3", "-k", "3"])
    assert result.exit_code == 0, result.output
    hits = pd.read_csv(__import__("io").StringIO(result.stdout))
    assert hits["id"].iloc[0] == "r3" and hits["score"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    assert hits["probability"].between(0, 1).all() and "hit_name" in hits.columns
    result = runner.invoke(app, ["index", "delete", str(tmp_path / "idx"), "r3", "nope"])
    assert result.exit_code == 0 and "removed 1 records; 1 ids were not in the index" in result.output
    result = runner.invoke(app, ["index", "search", str(tmp_path / "idx"), "--id", "r3"])
    assert result.exit_code == 2 and "not in the index" in result.output


def test_record_table_errors_name_the_row(tmp_path, calibrated_folder):
    table = tmp_path / "bad.csv"
    pd.DataFrame({"id": ["a", "b", "c"], "name": ["sony tv", "", "lg tv"]}).to_csv(table, index=False)
    result = runner.invoke(app, ["dedup", str(calibrated_folder), str(table), "-o", str(tmp_path / "c.csv")])
    assert result.exit_code == 2 and "row 3" in result.output and "empty" in result.output
    assert not (tmp_path / "c.csv").exists()
    pd.DataFrame({"id": ["a", "a"], "name": ["sony tv", "lg tv"]}).to_csv(table, index=False)
    result = runner.invoke(app, ["link", str(calibrated_folder), str(table), str(table), "-o", str(tmp_path / "c.csv")])
    assert result.exit_code == 2 and "'a' appears twice" in result.output and "row 3" in result.output
    result = runner.invoke(app, ["dedup", str(calibrated_folder), str(table), "--ignore", "truth",
                                 "-o", str(tmp_path / "c.csv")])
    assert result.exit_code == 2 and "no column 'truth'" in result.output
    (tmp_path / "done.csv").write_text("kept")  # an existing output is refused before the table is even read
    for command in (["dedup", str(calibrated_folder), str(tmp_path / "missing.csv")],
                    ["link", str(calibrated_folder), str(tmp_path / "missing.csv"), str(table)]):
        result = runner.invoke(app, [*command, "-o", str(tmp_path / "done.csv")])
        assert result.exit_code == 2 and "already exists" in result.output, result.output
    assert (tmp_path / "done.csv").read_text() == "kept"


def test_mined_training_pairs_hold_entity_positives_and_cross_entity_negatives(tiny_model):
    from twinnet.dedup import mine_training_pairs

    table = synthesize_products(60, duplicate_fraction=0.4, seed=1)
    records = table[["name", "brand", "price"]].to_dict(orient="records")
    pairs = mine_training_pairs(tiny_model, records, table["id"], table["entity_id"], k=5,
                                negatives_per_record=2)
    entity = dict(zip(table["id"], table["entity_id"]))
    same = np.asarray([entity[a] == entity[b] for a, b in zip(pairs.left_ids, pairs.right_ids)])
    assert (same == (pairs.labels == 1)).all()
    assert pairs.labels.sum() > 0 and (pairs.labels == 0).sum() > 0
    assert all(a != b for a, b in zip(pairs.left_ids, pairs.right_ids))
    negatives_per_left = pd.Series(np.asarray(pairs.left_ids)[pairs.labels == 0]).value_counts()
    assert negatives_per_left.max() <= 2

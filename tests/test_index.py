"""VectorIndex: upsert semantics, k beyond the size, empty index, every kind, save/load, model checks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from twinnet.errors import TwinnetError
from twinnet.index import KINDS, VectorIndex


def _vectors(n: int = 600, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_finds_each_vector_first_and_honours_deletes(kind):
    x = _vectors(12_000 if kind == "ivfpq" else 600)  # PQ needs 256 * 39 vectors to train 8-bit codes
    index = VectorIndex(16, kind=kind, nprobe=64)
    index.add([f"r{i}" for i in range(len(x))], x)
    found = index.search(x[:20], k=3)
    if kind == "ivfpq":  # compressed vectors: approximate, but the right record stays near the top
        assert sum(f"r{i}" in found.ids[i] for i in range(20)) >= 18
    else:
        assert [row[0] for row in found.ids] == [f"r{i}" for i in range(20)]
    index.delete(["r0", "r1"])
    assert len(index) == len(x) - 2
    found = index.search(x[:2], k=5)
    assert "r0" not in found.ids[0] and "r1" not in found.ids[1]


def test_an_id_added_twice_is_returned_once_with_its_new_vector():
    x = _vectors(50)
    index = VectorIndex(16)
    index.add([f"r{i}" for i in range(50)], x)
    index.add(["r7"], x[3] * 2.0)  # upsert: r7 now points where r3 is (scale is normalised away)
    found = index.search(x[3], k=50)
    row = [i for i in found.ids[0] if i is not None]
    assert len(row) == 50 and row.count("r7") == 1
    assert set(row[:2]) == {"r3", "r7"}
    assert found.scores[0, 1] == pytest.approx(1.0, abs=1e-5)
    # the same id twice in one call: the last vector wins
    index.add(["dup", "dup"], np.stack([x[10], x[20]]))
    assert index.search(x[20], k=1).ids[0, 0] in ("dup", "r20") and len(index) == 51
    assert index.reconstruct(["dup"])[0] == pytest.approx(x[20] / np.linalg.norm(x[20]), abs=1e-6)


def test_hnsw_upsert_never_returns_the_stale_vector():
    x = _vectors(200)
    index = VectorIndex(16, kind="hnsw")
    index.add([f"r{i}" for i in range(200)], x)
    index.add(["r5"], x[9])
    hits = index.search(x[5], k=200).ids[0]
    assert list(hits).count("r5") == 1 and hits[0] != "r5"


def test_k_larger_than_the_collection_and_empty_index():
    index = VectorIndex(16)
    empty = index.search(_vectors(3), k=10)
    assert empty.ids.shape == (3, 0) and empty.hits(0) == []
    index.add(["a", "b"], _vectors(2))
    found = index.search(_vectors(1, seed=5), k=10)
    assert found.ids.shape == (1, 2) and len(found.hits(0)) == 2
    with pytest.raises(TwinnetError, match="k must be"):
        index.search(_vectors(1), k=0)


def test_bad_vectors_are_refused():
    index = VectorIndex(16)
    with pytest.raises(TwinnetError, match=r"shape \(n, 16\)"):
        index.add(["a"], np.zeros((1, 8)))
    bad = _vectors(1)
    bad[0, 3] = np.nan
    with pytest.raises(TwinnetError, match="NaN"):
        index.add(["a"], bad)
    with pytest.raises(TwinnetError, match="kind must be"):
        VectorIndex(16, kind="annoy")


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(tmp_path, kind):
    x = _vectors(500)
    index = VectorIndex(16, kind=kind, model_fingerprint="f" * 32, nprobe=64)
    index.add([f"r{i}" for i in range(500)], x)
    index.delete(["r3"])
    import pandas as pd

    index.set_metadata(pd.DataFrame({"id": ["r1", "r2"], "name": ["one", "two"]}))
    before = index.search(x[:10], k=4)
    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx")
    after = loaded.search(x[:10], k=4)
    assert (before.ids == after.ids).all()
    np.testing.assert_allclose(before.scores, after.scores, atol=1e-6)
    assert "r3" not in loaded and len(loaded) == 499
    assert loaded.metadata.loc["r2", "name"] == "two"
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["dimension"] == 16 and manifest["normalized"] and manifest["model"]["fingerprint"] == "f" * 32
    loaded.add(["new"], x[0])  # labels keep counting after a reload: no clash with stored ones
    assert len(loaded) == 500 and set(loaded.search(x[0], k=2).ids[0]) == {"r0", "new"}


def test_failed_save_leaves_the_previous_index(tmp_path, monkeypatch):
    index = VectorIndex(16)
    index.add(["a", "b"], _vectors(2))
    index.save(tmp_path / "idx")
    index.add(["c"], _vectors(1, seed=3))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    import pandas as pd

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError):
        index.save(tmp_path / "idx")
    monkeypatch.undo()
    assert len(VectorIndex.load(tmp_path / "idx")) == 2
    assert [p for p in os.listdir(tmp_path) if p != "idx"] == []  # no staging folder left behind


def test_a_different_model_is_refused(tmp_path, tiny_model, tokenizer):
    from conftest import make_tiny_encoder
    from twinnet.model import SiameseModel

    index = VectorIndex.build(tiny_model, ["sony tv", "lg speaker", "bose headphones"], ids=["s", "l", "b"])
    index.save(tmp_path / "idx")
    assert len(VectorIndex.load(tmp_path / "idx", model=tiny_model)) == 3
    other = SiameseModel(make_tiny_encoder(tokenizer, seed=1))
    with pytest.raises(TwinnetError, match="built with another model"):
        VectorIndex.load(tmp_path / "idx", model=other)
    # searching with the building model gives the library's cosine scores
    found = index.search(tiny_model.embed(["sony tv"]), k=1)
    assert found.ids[0, 0] == "s" and found.scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_fingerprint_follows_the_weights(tiny_model, tmp_path):
    from twinnet.model import SiameseModel

    first = tiny_model.fingerprint()
    assert first == tiny_model.fingerprint()
    tiny_model.save(tmp_path / "m")
    assert SiameseModel.load(tmp_path / "m").fingerprint() == first
    with __import__("torch").no_grad():
        next(tiny_model.parameters()).add_(1e-3)
    assert tiny_model.fingerprint() != first


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_positional_index_labels_are_row_numbers_and_match_the_id_index(kind):
    from twinnet.index import positional_index

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(400, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    positional = positional_index(vectors, kind=kind, chunk_size=64, nlist=4, nprobe=4)
    scores, labels = positional.search_labels(vectors[:5], 3)
    assert labels[:, 0].tolist() == [0, 1, 2, 3, 4]  # each vector finds itself first, by its row number
    assert scores[:, 0] == pytest.approx(np.ones(5), abs=1e-5)
    exact = VectorIndex(16)
    exact.add([str(i) for i in range(400)], vectors)
    expected = exact.search(vectors[:5], 3)
    if kind != "ivf":  # flat and hnsw (at this size) are exact
        assert labels.astype(str).tolist() == expected.ids.tolist()

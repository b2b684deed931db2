"""Search and dedup benchmark: blocking recall, end-to-end linkage/dedup F1, and scaling.

Parts (each runs in its own process, so peak RSS is its own):

- ``abt-buy``: Abt-Buy tableA <-> tableB linked with a trained model (``--model``, default
  ``models/abt-buy`` from the main job): blocking recall at k = 1, 5, 10, 20 with candidate counts, and
  end-to-end pair F1 against the gold matches of all three splits.
- ``febrl``: a twinnet model trained on FEBRL 3 (pairs mined from its ground truth, threshold fitted on a held-out
  part of it) links FEBRL 4a <-> 4b; beside it the ``recordlinkage`` library with the configuration of its own
  FEBRL 4 tutorial (blocking on given name or surname, six field comparisons, match when more than 3 agree).
- ``cora``: Cora citations split by entity (seeded) into a training half and a test half; twinnet is trained
  and calibrated on the training half and deduplicates the test half; ``recordlinkage`` compares the same
  fields on all test-half pairs with a logistic regression fitted on the training half.
- ``scaling``: 10k, 100k and 1M synthetic products (``twinnet synth``) with a fixed precomputed embedding
  (character n-gram hashing + a sparse random projection to 384 dimensions), so that blocking, verification
  and clustering are measured alone: wall time, peak RSS, growth exponent.

    python benchmarks/dedup.py                       # every part (about 45 minutes on 2 cores)
    python benchmarks/dedup.py --parts scaling       # one part
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import RESULTS, peak_rss_mb, write_results  # noqa: E402

PARTS = ("scaling", "abt-buy", "febrl", "cora")
SCALING_SIZES = (10_000, 100_000, 1_000_000)
DIMENSION = 384
SEED = 42


def _row(dataset: str, method: str, metric: str, value: float, **extra) -> dict:
    return {"dataset": dataset, "method": method, "metric": metric, "value": round(float(value), 4), **extra}


# ---------------------------------------------------------------------------------------------- scaling
def hashed_embedding(texts: list[str], chunk: int = 50_000):
    """A fixed, training-free embedding: char 2-4-gram hashing, sparse random projection, L2 normalisation."""
    import numpy as np
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.random_projection import SparseRandomProjection

    hasher = HashingVectorizer(analyzer="char_wb", ngram_range=(2, 4), n_features=2 ** 18, alternate_sign=False)
    projection = SparseRandomProjection(n_components=DIMENSION, dense_output=True, random_state=SEED)
    projection.fit(hasher.transform(texts[:10]))
    out = np.empty((len(texts), DIMENSION), dtype=np.float32)
    for start in range(0, len(texts), chunk):
        block = projection.transform(hasher.transform(texts[start: start + chunk])).astype(np.float32)
        out[start: start + len(block)] = block / np.clip(np.linalg.norm(block, axis=1, keepdims=True), 1e-12, None)
    return out


def prepare_scaling(size: int, folder: Path) -> None:
    """Synthesize the collection, embed it, and calibrate a threshold on a separate validation collection."""
    import numpy as np

    from twinnet.calibration import fit_calibrator
    from twinnet.data.synth import synthesize_products
    from twinnet.dedup import block

    table = synthesize_products(size, seed=SEED)
    text = (table["name"] + " " + table["brand"] + " " + table["price"]).tolist()
    np.save(folder / "emb.npy", hashed_embedding(text))
    table[["id", "entity_id"]].to_parquet(folder / "truth.parquet", index=False)
    valid = synthesize_products(20_000, seed=SEED + 1)  # threshold from validation data, never from the test set
    emb = hashed_embedding((valid["name"] + " " + valid["brand"] + " " + valid["price"]).tolist())
    pairs = block(emb, k=10)
    entity = valid["entity_id"].to_numpy()
    labels = (entity[pairs.left] == entity[pairs.right]).astype(int)
    (folder / "calibration.json").write_text(json.dumps(fit_calibrator(pairs.scores, labels).to_dict()))


def run_scaling(size: int, folder: Path) -> list[dict]:
    import numpy as np
    import pandas as pd

    from twinnet.calibration import Calibrator
    from twinnet.dedup import deduplicate_embeddings
    from twinnet.metrics import cluster_metrics

    embeddings = np.load(folder / "emb.npy")
    truth = pd.read_parquet(folder / "truth.parquet")
    calibrator = Calibrator.from_dict(json.loads((folder / "calibration.json").read_text()))
    started = time.perf_counter()
    result = deduplicate_embeddings(embeddings, truth["id"].tolist(), threshold=calibrator.threshold_, k=10,
                                    probability=calibrator.predict_proba)
    wall = time.perf_counter() - started
    quality = cluster_metrics(result.clusters["cluster"].to_numpy(), truth["entity_id"].to_numpy())
    stats = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.stats.items()}
    name = f"synthetic-{size // 1000}k"
    return [_row(name, "twinnet", "wall_s", wall, records=size, peak_rss_mb=round(peak_rss_mb(), 1),
                 pairwise_f1=round(quality["pairwise_f1"], 4), bcubed_f1=round(quality["bcubed_f1"], 4),
                 settings={"k": 10, "clustering": "centre", "embedding": f"char-ngram hashing -> {DIMENSION}-d",
                           "threshold": round(calibrator.threshold_, 4)}, stats=stats)]


# ---------------------------------------------------------------------------------------------- abt-buy
def run_abt_buy(model_path: Path) -> list[dict]:
    import numpy as np
    import pandas as pd

    from twinnet import SiameseModel
    from twinnet.data import registry
    from twinnet.data.readers import read_records
    from twinnet.dedup import block, embed_in_chunks, link_embeddings
    from twinnet.metrics import pair_set_metrics

    folder = registry.path("abt-buy")
    model = SiameseModel.load(model_path)
    ids_a, records_a = read_records(folder / "tableA.csv")
    ids_b, records_b = read_records(folder / "tableB.csv")
    gold = pd.concat([pd.read_csv(folder / f"{s}.csv", dtype=str) for s in ("train", "valid", "test")])
    gold = gold[gold["label"] == "1"]
    gold_pairs = list(zip(gold["ltable_id"], gold["rtable_id"]))
    started = time.perf_counter()
    ids_a, emb_a = embed_in_chunks(model, [(ids_a, records_a)])
    ids_b, emb_b = embed_in_chunks(model, [(ids_b, records_b)])
    embed_s = time.perf_counter() - started
    rows = []
    a_names, b_names = np.asarray(ids_a, dtype=object), np.asarray(ids_b, dtype=object)
    for k in (1, 5, 10, 20):
        candidates = block(emb_a, emb_b, k=k)
        found = pair_set_metrics(zip(a_names[candidates.left], b_names[candidates.right]), gold_pairs,
                                 unordered=False)
        rows.append(_row("Abt-Buy", "twinnet", "blocking_recall_at_k", 100 * found["recall"], k=k,
                         candidates=len(candidates)))
    for clustering in ("one_to_one", "centre"):
        started = time.perf_counter()
        result = link_embeddings(emb_a, ids_a, emb_b, ids_b, threshold=model.calibration_.threshold_, k=10,
                                 clustering=clustering, probability=model.calibration_.predict_proba)
        wall = time.perf_counter() - started
        matched = result.pairs[result.pairs["in_cluster"]]
        m = pair_set_metrics(zip(matched["left_id"], matched["right_id"]), gold_pairs, unordered=False)
        rows.append(_row("Abt-Buy", "twinnet" if clustering == "one_to_one" else f"twinnet-{clustering}",
                         "pairwise_f1", 100 * m["f1"], precision=round(100 * m["precision"], 2),
                         recall=round(100 * m["recall"], 2), wall_s=round(wall + embed_s, 1),
                         peak_rss_mb=round(peak_rss_mb(), 1),
                         settings={"k": 10, "clustering": clustering, "model": str(model_path),
                                   "threshold": round(model.calibration_.threshold_, 4),
                                   "gold": "positive pairs of train+valid+test"}))
    return rows


# ---------------------------------------------------------------------------------------------- febrl / cora
def _train_collection_model(records, ids, entities, *, valid_fraction: float, max_length: int, epochs: int,
                            serializer, positives: int = 2, negatives: int = 3):
    """Train twinnet on pairs mined from a labelled collection; threshold fitted on held-out entities."""
    import numpy as np

    from twinnet import SiameseModel, Trainer
    from twinnet.dedup import mine_training_pairs

    model = SiameseModel.for_text(max_length=max_length, serializer=serializer)
    rng = np.random.default_rng(SEED)
    unique_entities = sorted(set(entities))
    held = set(rng.choice(unique_entities, int(len(unique_entities) * valid_fraction), replace=False).tolist())
    part = np.asarray([e in held for e in entities])

    def subset(mask):
        rows = np.nonzero(mask)[0]
        return [records[i] for i in rows], [ids[i] for i in rows], [entities[i] for i in rows]

    train = mine_training_pairs(model, *subset(~part), k=10, positives_per_record=positives,
                                negatives_per_record=negatives, seed=SEED)
    valid = mine_training_pairs(model, *subset(part), k=10, positives_per_record=positives,
                                negatives_per_record=negatives, seed=SEED + 1)
    started = time.perf_counter()
    Trainer(model, loss="online_contrastive+multiple_negatives", epochs=epochs, learning_rate=1e-4, seed=SEED,
            progress=False).fit(train, valid)
    return model, time.perf_counter() - started, {"train_pairs": len(train), "valid_pairs": len(valid)}


def _read_febrl(name: str):
    import pandas as pd

    frame = pd.read_csv(registry_path("febrl") / f"{name}.csv", dtype=str, skipinitialspace=True,
                        keep_default_na=False)
    frame.columns = [c.strip() for c in frame.columns]
    frame["entity"] = frame["rec_id"].str.extract(r"rec-(\d+)-")[0]
    return frame


FEBRL_FIELDS = ["given_name", "surname", "street_number", "address_1", "address_2", "suburb", "postcode", "state",
                "date_of_birth", "soc_sec_id"]


def run_febrl() -> list[dict]:
    import recordlinkage
    from recordlinkage.index import Block

    from twinnet.data.records import RecordSerializer
    from twinnet.dedup import link
    from twinnet.metrics import pair_set_metrics

    import numpy as np

    train = _read_febrl("dataset3")
    # half of FEBRL 3's people (seeded) keep the training run to a few minutes on 2 cores
    people = sorted(train["entity"].unique())
    kept = set(np.random.default_rng(SEED).choice(people, len(people) // 2, replace=False).tolist())
    train = train[train["entity"].isin(kept)].reset_index(drop=True)
    records = train[FEBRL_FIELDS].to_dict(orient="records")
    serializer = RecordSerializer(attributes=FEBRL_FIELDS)
    model, train_s, sizes = _train_collection_model(records, train["rec_id"].tolist(), train["entity"].tolist(),
                                                    valid_fraction=0.2, max_length=48, epochs=1,
                                                    serializer=serializer, positives=1, negatives=2)
    a, b = _read_febrl("dataset4a"), _read_febrl("dataset4b")
    gold = [(x, y) for x, y in zip(a.sort_values("entity")["rec_id"], b.sort_values("entity")["rec_id"])]
    assert all(x.split("-")[1] == y.split("-")[1] for x, y in gold)
    started = time.perf_counter()
    result = link(model, a[FEBRL_FIELDS].to_dict(orient="records"), b[FEBRL_FIELDS].to_dict(orient="records"),
                  a["rec_id"].tolist(), b["rec_id"].tolist(), k=10, clustering="one_to_one")
    wall = time.perf_counter() - started
    matched = result.pairs[result.pairs["in_cluster"]]
    ours = pair_set_metrics(zip(matched["left_id"], matched["right_id"]), gold, unordered=False)
    rows = [_row("FEBRL4", "twinnet", "pairwise_f1", 100 * ours["f1"], precision=round(100 * ours["precision"], 2),
                 recall=round(100 * ours["recall"], 2), wall_s=round(wall, 1), train_s=round(train_s, 1),
                 peak_rss_mb=round(peak_rss_mb(), 1),
                 settings={"trained_on": "half of FEBRL dataset3's people (mined pairs)", **sizes, "k": 10,
                           "clustering": "one_to_one", "threshold": round(model.calibration_.threshold_, 4),
                           "epochs": 1, "max_length": 48})]

    started = time.perf_counter()
    left, right = a.set_index("rec_id"), b.set_index("rec_id")
    indexer = recordlinkage.Index()
    indexer.add(Block("given_name"))
    indexer.add(Block("surname"))
    candidates = indexer.index(left, right)
    compare = recordlinkage.Compare()
    compare.string("given_name", "given_name", method="jarowinkler", threshold=0.85)
    compare.string("surname", "surname", method="jarowinkler", threshold=0.85)
    compare.exact("date_of_birth", "date_of_birth")
    compare.exact("suburb", "suburb")
    compare.exact("state", "state")
    compare.string("address_1", "address_1", threshold=0.85)
    features = compare.compute(candidates, left, right)
    predicted = features[features.sum(axis=1) > 3].index
    wall = time.perf_counter() - started
    theirs = pair_set_metrics(list(predicted), gold, unordered=False)
    rows.append(_row("FEBRL4", "recordlinkage", "pairwise_f1", 100 * theirs["f1"],
                     precision=round(100 * theirs["precision"], 2), recall=round(100 * theirs["recall"], 2),
                     wall_s=round(wall, 1), settings={"index": "Block(given_name) | Block(surname)",
                                                      "rule": "sum of 6 comparisons > 3 (recordlinkage tutorial)",
                                                      "candidates": len(candidates)}))
    return rows


CORA_FIELDS = ["authors", "title", "booktitle", "journal", "year", "pages", "volume", "publisher"]


def run_cora() -> list[dict]:
    import numpy as np
    import pandas as pd
    import recordlinkage
    from recordlinkage.index import Full

    from twinnet.data.pairs import UnionFind
    from twinnet.data.records import RecordSerializer
    from twinnet.dedup import deduplicate
    from twinnet.metrics import cluster_metrics

    folder = registry_path("hpi_dedup")
    table = pd.read_csv(folder / "cora.csv", sep=";", dtype=str, keep_default_na=False)
    gold = pd.read_csv(folder / "cora_DPL.csv", sep=";", dtype=str)
    groups = UnionFind()
    for x, y in zip(gold["id1"], gold["id2"]):
        groups.union(x, y)
    table["entity"] = [groups.find(i) for i in table["id"]]
    entities = sorted(table["entity"].unique())
    rng = np.random.default_rng(SEED)
    test_entities = set(rng.choice(entities, len(entities) // 2, replace=False).tolist())
    is_test = table["entity"].isin(test_entities).to_numpy()
    train, test = table[~is_test].reset_index(drop=True), table[is_test].reset_index(drop=True)
    serializer = RecordSerializer(attributes=CORA_FIELDS)
    records = train[CORA_FIELDS].to_dict(orient="records")
    model, train_s, sizes = _train_collection_model(records, train["id"].tolist(), train["entity"].tolist(),
                                                    valid_fraction=0.25, max_length=64, epochs=1,
                                                    serializer=serializer)
    rows = []
    for clustering in ("components", "centre"):
        started = time.perf_counter()
        result = deduplicate(model, test[CORA_FIELDS].to_dict(orient="records"), test["id"].tolist(), k=20,
                             clustering=clustering)
        wall = time.perf_counter() - started
        m = cluster_metrics(result.clusters["cluster"].to_numpy(), test["entity"].to_numpy())
        rows.append(_row("Cora", "twinnet" if clustering == "components" else f"twinnet-{clustering}",
                         "pairwise_f1", 100 * m["pairwise_f1"], precision=round(100 * m["pairwise_precision"], 2),
                         recall=round(100 * m["pairwise_recall"], 2), bcubed_f1=round(100 * m["bcubed_f1"], 2),
                         wall_s=round(wall, 1), train_s=round(train_s, 1), peak_rss_mb=round(peak_rss_mb(), 1),
                         settings={"split": "entities halved (seed 42); train + calibrate on one half, test on the "
                                            "other", **sizes, "k": 20, "clustering": clustering,
                                   "threshold": round(model.calibration_.threshold_, 4), "max_length": 64}))

    # recordlinkage: field comparisons on every pair of a half, a logistic regression fitted on the training half
    started = time.perf_counter()

    def features(frame):
        frame = frame.set_index("id")
        candidates = Full().index(frame)
        compare = recordlinkage.Compare()
        compare.string("title", "title", method="jarowinkler", label="title")
        compare.string("authors", "authors", method="jarowinkler", label="authors")
        compare.string("booktitle", "booktitle", method="jarowinkler", label="booktitle")
        compare.string("journal", "journal", method="jarowinkler", label="journal")
        compare.exact("year", "year", label="year")
        compare.exact("pages", "pages", label="pages")
        vectors = compare.compute(candidates, frame)
        entity = frame["entity"]
        labels = (entity.loc[vectors.index.get_level_values(0)].to_numpy() ==
                  entity.loc[vectors.index.get_level_values(1)].to_numpy())
        return vectors, labels

    train_x, train_y = features(train)
    classifier = recordlinkage.LogisticRegressionClassifier()
    classifier.fit(train_x, train_x.index[train_y])
    test_x, _ = features(test)
    predicted = classifier.predict(test_x)
    clusters = UnionFind()
    for x, y in predicted:
        clusters.union(str(x), str(y))
    labels = [clusters.find(i) for i in test["id"]]
    wall = time.perf_counter() - started
    m = cluster_metrics(np.asarray(labels), test["entity"].to_numpy())
    rows.append(_row("Cora", "recordlinkage", "pairwise_f1", 100 * m["pairwise_f1"],
                     precision=round(100 * m["pairwise_precision"], 2), recall=round(100 * m["pairwise_recall"], 2),
                     bcubed_f1=round(100 * m["bcubed_f1"], 2), wall_s=round(wall, 1),
                     settings={"index": "Full (all pairs of the half)", "classifier": "LogisticRegression on the "
                               "training half", "comparisons": "jarowinkler title/authors/booktitle/journal, "
                               "exact year/pages", "clustering": "connected components"}))
    return rows


def registry_path(folder: str) -> Path:
    from twinnet.data.registry import data_roots

    for root in data_roots():
        if (root / folder).exists():
            return root / folder
    raise SystemExit(f"{folder} not found under {', '.join(map(str, data_roots()))} (set TWINNET_DATA_DIR)")


# ---------------------------------------------------------------------------------------------- driver
def markdown(results: list[dict]) -> str:
    lines = ["| dataset | method | metric | value | P | R | k / candidates | wall s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        kc = f"{r['k']} / {r['candidates']}" if "candidates" in r else ""
        lines.append(f"| {r['dataset']} | {r['method']} | {r['metric']} | {r['value']} | {r.get('precision', '')} | "
                     f"{r.get('recall', '')} | {kc} | {r.get('wall_s', '')} | {r.get('peak_rss_mb', '')} |")
    scaling = {r["records"]: r["value"] for r in results if r["dataset"].startswith("synthetic")}
    if 100_000 in scaling and 1_000_000 in scaling:
        exponent = math.log(scaling[1_000_000] / scaling[100_000]) / math.log(10)
        lines.append(f"\nGrowth exponent of block + verify + cluster wall time, 100k -> 1M: {exponent:.3f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--model", default="models/abt-buy", help="trained Abt-Buy model folder (the main job's)")
    parser.add_argument("--sizes", default=",".join(map(str, SCALING_SIZES)))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        if args.one.startswith("prepare-"):
            prepare_scaling(int(args.one.split("-")[1]), Path(args.folder))
            return
        if args.one.startswith("scaling-"):
            rows = run_scaling(int(args.one.split("-")[1]), Path(args.folder))
        elif args.one == "abt-buy":
            rows = run_abt_buy(Path(args.model))
        elif args.one == "febrl":
            rows = run_febrl()
        else:
            rows = run_cora()
        print("RESULTS " + json.dumps(rows), flush=True)
        return

    def child(*extra: str) -> list[dict]:
        proc = subprocess.run([sys.executable, __file__, *extra, "--model", args.model], stdout=subprocess.PIPE,
                              text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULTS ")]
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(extra)} failed")
        return json.loads(lines[-1][8:]) if lines else []

    previous = RESULTS / "dedup.json"
    results = json.loads(previous.read_text())["results"] if previous.exists() else []
    parts = args.parts.split(",")
    for part in parts:
        if part == "scaling":
            sizes = [int(x) for x in args.sizes.split(",")]
            results = [r for r in results if r.get("records") not in sizes or not r["dataset"].startswith("synthetic")]
            for size in sizes:
                with tempfile.TemporaryDirectory() as folder:
                    child("--one", f"prepare-{size}", "--folder", folder)
                    rows = child("--one", f"scaling-{size}", "--folder", folder)
                results += rows
                print(json.dumps(rows), flush=True)
        else:
            title = {"abt-buy": "Abt-Buy", "febrl": "FEBRL4", "cora": "Cora"}[part]
            results = [r for r in results if r["dataset"] != title]
            rows = child("--one", part)
            results += rows
            print(json.dumps(rows), flush=True)
    path = write_results("dedup", results, "python benchmarks/dedup.py --parts " + args.parts)
    (RESULTS / "dedup.md").write_text(markdown(results))
    print(f"wrote {path}")
    print(markdown(results))


if __name__ == "__main__":
    main()

"""STS Benchmark: graded sentence similarity, Spearman x100 on test, and training throughput.

Protocol (../shared/BENCHMARKS.md): fine-tune all-MiniLM-L6-v2 on STS-B train with a graded loss; the epoch and
the recipe are chosen on dev Spearman; test is evaluated once. Baseline: the pretrained model. Throughput: twinnet's
Trainer and sentence-transformers' own trainer (SentenceTransformerTrainer + CoSENTLoss), same model, batch size,
max length, pairs and number of steps, measured one after the other in this process.

    python benchmarks/stsb.py                          # quality (every recipe) + throughput, all cores
    python benchmarks/stsb.py --parts throughput       # throughput only (a few minutes)
    python benchmarks/stsb.py --recipes cosent --epochs 1 --train-limit 1000 --no-write   # a quick trial
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import RESULTS, sentence_transformers_pairs_per_s, peak_rss_mb, write_results  # noqa: E402

# Recipes tried on the same data; the winner is the one with the best dev Spearman (never test).
RECIPES = {
    "cosent": {"loss": "cosent", "learning_rate": 2e-5},
    "cosent-lr5e-5": {"loss": "cosent", "learning_rate": 5e-5},
    "cosine_regression": {"loss": "cosine_regression", "learning_rate": 2e-5},
}
# encode_chunk_size: each batch's sentences are encoded in length-sorted chunks of 8 (same loss, less padding)
TRAINING = {"epochs": 4, "batch_size": 16, "warmup_ratio": 0.1, "seed": 42, "encode_chunk_size": 8}
PUBLISHED = "SBERT-NLI-base 77.1; NLI+STSb bi-encoders 85-87; cross-encoders 88-91"


def spearman_x100(model, pairs) -> float:
    from scipy.stats import spearmanr

    return round(100 * float(spearmanr(model.score_pairs(pairs, batch_size=128), pairs.scores).statistic), 2)


def quality(recipes: list[str], epochs: int, batch_size: int, max_length: int, train_limit: int,
            chunk: int) -> list[dict]:
    import torch

    from twinnet import SiameseModel, Trainer, datasets

    train, valid, test = datasets.load_pairs("stsb")
    if train_limit:  # a random sample: the file is ordered by genre, so its first rows are one genre only
        import numpy as np

        train = train.subset(np.sort(np.random.default_rng(0).permutation(len(train))[:train_limit]))
    rows = []
    start = time.perf_counter()
    pretrained = SiameseModel.for_text(max_length=max_length)
    rows.append({"dataset": "STS-B", "method": "pretrained", "metric": "spearman",
                 "value": spearman_x100(pretrained, test), "valid_spearman": spearman_x100(pretrained, valid),
                 "wall_s": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads(),
                 "settings": {"model": "all-MiniLM-L6-v2", "max_length": max_length}})
    runs = []
    for name in recipes:
        start = time.perf_counter()
        model = SiameseModel.for_text(max_length=max_length)
        settings = {**TRAINING, **RECIPES[name], "epochs": epochs, "batch_size": batch_size,
                    "encode_chunk_size": chunk}
        Trainer(model, progress=False, **settings).fit(train, valid)
        wall = time.perf_counter() - start
        selected = model.card_["selected_epoch"]
        valid_value = next(h["valid_spearman"] for h in model.card_["history"] if h["epoch"] == selected)
        runs.append({"dataset": "STS-B", "method": "twinnet", "metric": "spearman", "value": spearman_x100(model, test),
                     "valid_spearman": round(100 * valid_value, 2), "wall_s": round(wall, 1),
                     "peak_rss_mb": round(peak_rss_mb(), 1), "threads": torch.get_num_threads(),
                     "settings": {"recipe": name, **settings, "max_length": max_length, "selected_epoch": selected,
                                  "train_pairs": len(train),
                                  "valid_spearman_per_epoch": [round(100 * h["valid_spearman"], 2)
                                                               for h in model.card_["history"]]}})
        print(runs[-1], flush=True)
    runs.sort(key=lambda r: -r["valid_spearman"])  # the recipe is chosen on dev, never on test
    rows.append(runs[0])
    rows += [{**r, "method": "twinnet-variant"} for r in runs[1:]]
    return rows


def throughput(steps: int, batch_size: int, max_length: int, chunk: int, learning_rate: float = 2e-5) -> list[dict]:
    """pairs/s of the training steps alone (model loading and evaluation excluded), same pairs for all. twinnet
    runs with length-sorted chunks (``chunk``) and, as a variant, in one pass per batch."""
    import numpy as np
    import torch

    from twinnet import SiameseModel, Trainer, datasets

    train, _, _ = datasets.load_pairs("stsb")
    order = np.random.default_rng(0).permutation(len(train))[: steps * batch_size]
    pairs = train.subset(order)
    threads = torch.get_num_threads()

    def twinnet_pairs_per_s(chunk_size: int) -> tuple[float, dict]:
        model = SiameseModel.for_text(max_length=max_length)
        trainer = Trainer(model, loss="cosent", epochs=1, batch_size=batch_size, learning_rate=learning_rate,
                          select_best=False, progress=False, seed=42, encode_chunk_size=chunk_size)
        trainer.fit(pairs)
        epoch = trainer.history_[-1]
        return epoch["pairs"] / epoch["seconds"], epoch

    ours, epoch = twinnet_pairs_per_s(chunk)
    one_pass = twinnet_pairs_per_s(0)[0] if chunk else None

    theirs = sentence_transformers_pairs_per_s(list(pairs.left), list(pairs.right), (pairs.scores / 5.0).tolist(),
                                               "cosent", batch_size=batch_size, max_length=max_length,
                                               learning_rate=learning_rate, max_steps=steps)
    common = {"dataset": "STS-B", "steps": steps, "batch_size": batch_size, "max_length": max_length,
              "threads": threads, "loss": "CoSENT"}
    variant = ([{**common, "method": "twinnet-variant", "metric": "pairs_per_s", "value": round(one_pass, 2),
                 "encode_chunk_size": 0}] if one_pass else [])
    return [
        {**common, "method": "twinnet", "metric": "pairs_per_s", "value": round(ours, 2),
         "records_encoded": epoch["records_encoded"], "pairs": epoch["pairs"], "encode_chunk_size": chunk},
        *variant,
        {**common, "method": "sentence-transformers", "metric": "pairs_per_s", "value": round(theirs, 2),
         "trainer": "SentenceTransformerTrainer", "records_encoded": 2 * steps * batch_size},
        {**common, "method": "twinnet", "metric": "speedup_vs_sentence_transformers", "value": round(ours / theirs, 2)},
    ]


def markdown(results: list[dict]) -> str:
    by = {(r["method"], r["metric"]): r for r in results}
    lines = []
    if any(r["metric"] == "spearman" for r in results):
        lines = ["| STS-B test Spearman x100 | dev | recipe (chosen on dev) | train wall s | published |",
                 "|---|---|---|---|---|"]
    if ("twinnet", "spearman") in by:
        t = by[("twinnet", "spearman")]
        lines.append(f"| twinnet **{t['value']}** | {t['valid_spearman']} | {t['settings']['recipe']}, epoch "
                     f"{t['settings']['selected_epoch']} of {t['settings']['epochs']} | {t['wall_s']} | {PUBLISHED} |")
    for r in results:
        if r["method"] == "twinnet-variant" and r["metric"] == "spearman":
            lines.append(f"| variant {r['value']} | {r['valid_spearman']} | {r['settings']['recipe']} | {r['wall_s']} | |")
    if ("pretrained", "spearman") in by:
        p = by[("pretrained", "spearman")]
        lines.append(f"| pretrained all-MiniLM-L6-v2 {p['value']} | {p['valid_spearman']} | no fine-tuning | – | |")
    if ("twinnet", "pairs_per_s") in by:
        t, s = by[("twinnet", "pairs_per_s")], by[("sentence-transformers", "pairs_per_s")]
        ratio = by[("twinnet", "speedup_vs_sentence_transformers")]["value"]
        one = next((r["value"] for r in results if r["method"] == "twinnet-variant" and r["metric"] == "pairs_per_s"),
                   "–")
        lines += ["", "| training throughput (pairs/s) | twinnet | twinnet, one pass per batch | sentence-transformers "
                      "| ratio |", "|---|---|---|---|---|",
                  f"| CoSENT, batch {t['batch_size']}, length {t['max_length']}, {t['steps']} steps, {t['threads']} "
                  f"threads | {t['value']} (chunks of {t['encode_chunk_size']}) | {one} | {s['value']} | {ratio}x |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="quality,throughput")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--epochs", type=int, default=TRAINING["epochs"])
    parser.add_argument("--batch-size", type=int, default=TRAINING["batch_size"])
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--train-limit", type=int, default=0, help="train on a random N pairs only (trials)")
    parser.add_argument("--throughput-steps", type=int, default=40)
    parser.add_argument("--encode-chunk-size", type=int, default=TRAINING["encode_chunk_size"],
                        help="Trainer.encode_chunk_size for twinnet (0 = one pass per batch)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print, do not write benchmarks/results")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    started = time.perf_counter()
    results = []
    if "quality" in parts:
        results += quality(args.recipes.split(","), args.epochs, args.batch_size, args.max_length, args.train_limit,
                           args.encode_chunk_size)
    if "throughput" in parts:
        results += throughput(args.throughput_steps, args.batch_size, args.max_length, args.encode_chunk_size)
    results.append({"dataset": "STS-B", "method": "benchmark", "metric": "wall_s",
                    "value": round(time.perf_counter() - started, 1)})
    print(markdown(results))
    if not args.no_write:
        path = write_results("stsb", results)
        (RESULTS / "stsb.md").write_text(markdown(results))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

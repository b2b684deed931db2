"""Training throughput on entity-matching data: twinnet's trainer against sentence-transformers' own.

Same model (all-MiniLM-L6-v2), same training pairs (one full epoch of the dataset's train split), same batch size,
maximum length, loss (online contrastive) and serialisation, measured one after the other in this process.

Why twinnet can be faster on this data: records recur across pairs (an Abt-Buy record is in about six training
pairs), and twinnet groups a batch's pairs by record and encodes each distinct record of a batch once, in
length-sorted chunks (``--encode-chunk-size``); with ``batch_order="graph"`` left records that share candidates
also share a batch. A pair trainer encodes both sides of every pair, padded to the longest text of the batch.

    python benchmarks/train_throughput.py --threads 2            # Abt-Buy and Amazon-Google, ~15 minutes
    python benchmarks/train_throughput.py --datasets abt-buy
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import RESULTS, sentence_transformers_pairs_per_s, write_results  # noqa: E402
from er_magellan import RECIPES, TITLES  # noqa: E402

LOSS = "online_contrastive"


def measure(name: str, batch_size: int, learning_rate: float, chunk: int) -> list[dict]:
    import torch

    from twinnet import SiameseModel, Trainer, datasets
    from twinnet.data import RecordSerializer

    recipe = RECIPES[name]
    train, _, _ = datasets.load_pairs(name)
    serializer = RecordSerializer(attributes=recipe["attributes"], split_codes=recipe["split_codes"])
    ours = {}
    for order in ("shuffle", "graph"):
        model = SiameseModel.for_text(max_length=recipe["max_length"], serializer=serializer)
        trainer = Trainer(model, loss=LOSS, epochs=1, batch_size=batch_size, learning_rate=learning_rate,
                          select_best=False, progress=False, seed=42, encode_chunk_size=chunk, batch_order=order)
        trainer.fit(train)
        ours[order] = trainer.history_[-1]
    theirs = sentence_transformers_pairs_per_s(serializer.serialize_many(train.left),
                                               serializer.serialize_many(train.right), train.labels.tolist(), LOSS,
                                               batch_size=batch_size, max_length=recipe["max_length"],
                                               learning_rate=learning_rate)
    common = {"dataset": TITLES[name], "loss": LOSS, "batch_size": batch_size, "max_length": recipe["max_length"],
              "pairs": len(train), "threads": torch.get_num_threads()}
    rows = [{**common, "method": "sentence-transformers", "metric": "pairs_per_s", "value": round(theirs, 2),
             "trainer": "SentenceTransformerTrainer", "records_encoded": 2 * len(train),
             "seconds": round(len(train) / theirs, 1)}]
    for order, epoch in ours.items():
        method = "twinnet" if order == "shuffle" else "twinnet-graph-order"
        rate = epoch["pairs"] / epoch["seconds"]
        rows += [{**common, "method": method, "metric": "pairs_per_s", "value": round(rate, 2),
                  "records_encoded": epoch["records_encoded"], "seconds": round(epoch["seconds"], 1),
                  "encode_chunk_size": chunk, "batch_order": order},
                 {**common, "method": method, "metric": "speedup_vs_sentence_transformers",
                  "value": round(rate / theirs, 2), "batch_order": order}]
    return rows


def markdown(results: list[dict]) -> str:
    lines = ["| dataset | pairs | sentence-transformers pairs/s (records encoded) | twinnet pairs/s (records encoded) "
             "| ratio | twinnet, `batch_order=graph` | ratio |", "|---|---|---|---|---|---|---|"]
    for title in dict.fromkeys(r["dataset"] for r in results):
        by = {(r["method"], r["metric"]): r for r in results if r["dataset"] == title}
        theirs = by[("sentence-transformers", "pairs_per_s")]
        cells = []
        for method in ("twinnet", "twinnet-graph-order"):
            ours = by[(method, "pairs_per_s")]
            cells.append(f"{ours['value']} ({ours['records_encoded']}) | "
                         f"**{by[(method, 'speedup_vs_sentence_transformers')]['value']}x**")
        lines.append(f"| {title} | {theirs['pairs']} | {theirs['value']} ({theirs['records_encoded']}) | "
                     + " | ".join(cells) + " |")
    first = results[0]
    chunk = next(r["encode_chunk_size"] for r in results if r.get("encode_chunk_size") is not None)
    return ("\n".join(lines) + f"\n\nOne epoch each, loss {first['loss']}, batch {first['batch_size']}, "
            f"{first['threads']} threads, same process, one after the other; twinnet encodes each batch's distinct "
            f"records in length-sorted chunks (encode_chunk_size {chunk}).\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="abt-buy,amazon-google")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--encode-chunk-size", type=int, default=32,
                        help="twinnet's Trainer.encode_chunk_size (0 = one padded pass per batch)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown dataset {unknown[0]!r}; choose from {', '.join(RECIPES)}")
    results = []
    for name in names:
        rows = measure(name, args.batch_size, args.lr, args.encode_chunk_size)
        results += rows
        print(rows, flush=True)
    path = write_results("train_throughput", results)
    (RESULTS / "train_throughput.md").write_text(markdown(results))
    print(f"wrote {path}\n{markdown(results)}")


if __name__ == "__main__":
    main()

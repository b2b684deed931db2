"""CPU encoding speed, side by side in one run: sentence-transformers ``encode`` vs twinnet (PyTorch, ONNX fp32,
ONNX int8, and PyTorch under bfloat16 autocast where the CPU has native bfloat16) on the same trained model folder, the same records, batch size and thread count.

Records: the Abt-Buy and Amazon-Google tables (tableA + tableB), serialised as in the ER-Magellan recipes; every
backend gets the same texts.
Quality: Abt-Buy test F1 of each backend with the model's stored threshold (never re-tuned).

    python benchmarks/speed.py --model models/abt-buy            # after scripts/main_job.sh
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

from common import RESULTS, write_results  # noqa: E402

DATASETS = {"abt-buy": "Abt-Buy", "amazon-google": "Amazon-Google"}
# How each table's records become text: the attributes of the ER-Magellan recipes (benchmarks/er_magellan.py).
ATTRIBUTES = {"abt-buy": ["name", "price"], "amazon-google": ["title", "manufacturer", "price"]}


def table_texts(name: str) -> list[str]:
    from twinnet.data import RecordSerializer, registry
    from twinnet.data.readers import read_records

    folder = registry.path(name)
    serializer = RecordSerializer(attributes=ATTRIBUTES[name], split_codes=True)
    records = read_records(folder / "tableA.csv")[1] + read_records(folder / "tableB.csv")[1]
    return serializer.serialize_many(records)


def timed(fn, repeats: int) -> float:
    """Best of ``repeats`` wall times (the machines are shared; the minimum is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/abt-buy")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N records per dataset (smoke runs)")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from twinnet import SiameseModel, datasets
    from twinnet.export import export_onnx
    from twinnet.model import bf16_cpu_supported
    from twinnet.metrics import binary_metrics
    from twinnet.runtime import OnnxSiameseModel
    from twinnet.scoring import cosine_rows

    torch.set_num_threads(args.threads)
    folder = Path(args.model)
    model = SiameseModel.load(folder)
    report = export_onnx(model, folder, quantize="int8")
    backends = {
        "twinnet-torch": model,
        "twinnet-onnx-fp32": OnnxSiameseModel.load(folder, threads=args.threads),
        "twinnet-onnx-int8": OnnxSiameseModel.load(folder, quantized=True, threads=args.threads),
    }
    if bf16_cpu_supported():  # bfloat16 autocast: only where the CPU computes it natively
        backends["twinnet-torch-bf16"] = SiameseModel.load(folder).set_inference_precision("bf16")
    reference = SentenceTransformer(str(folder), device="cpu")
    reference.max_seq_length = model.encoder.max_length

    _, _, test = datasets.load_pairs("abt-buy")
    threshold = model.calibration_.threshold_
    results = []
    for name, title in DATASETS.items():
        texts = table_texts(name)[: args.limit or None]
        # Both sides get the same texts; twinnet's own de-duplication of repeated texts is part of what it does.
        st_seconds = timed(lambda: reference.encode(texts, batch_size=args.batch_size, normalize_embeddings=True,
                                                    show_progress_bar=False, convert_to_numpy=True), args.repeats)
        st_rate = len(texts) / st_seconds
        results.append({"dataset": title, "method": "sentence-transformers", "metric": "records_per_s",
                        "value": round(st_rate, 1), "records": len(texts), "distinct_records": len(set(texts)),
                        "wall_s": round(st_seconds, 2),
                        "threads": args.threads, "batch_size": args.batch_size})
        for backend, runner in backends.items():
            seconds = timed(lambda: runner.embed(texts, batch_size=args.batch_size), args.repeats)
            rate = len(texts) / seconds
            row = {"dataset": title, "method": backend, "metric": "records_per_s", "value": round(rate, 1),
                   "records": len(texts), "wall_s": round(seconds, 2), "threads": args.threads,
                   "batch_size": args.batch_size, "speedup_vs_sentence_transformers": round(rate / st_rate, 2)}
            if name == "abt-buy":
                scores = runner.score_pairs(test, batch_size=args.batch_size)
                row["test_f1"] = round(100 * binary_metrics(test.labels, scores, threshold)["f1"], 2)
            results.append(row)
    st_scores = cosine_rows(
        reference.encode(model.to_inputs(test.left), batch_size=args.batch_size, normalize_embeddings=True),
        reference.encode(model.to_inputs(test.right), batch_size=args.batch_size, normalize_embeddings=True))
    for row in results:
        if row["method"] == "sentence-transformers" and row["dataset"] == "Abt-Buy":
            row["test_f1"] = round(100 * binary_metrics(test.labels, st_scores, threshold)["f1"], 2)
    for row in results:
        row["settings"] = {"model": str(folder), "max_length": model.encoder.max_length,
                           "int8_min_cosine": round(report["int8"]["min_cosine"], 4),
                           "fp32_max_abs_diff": report["fp32"]["max_abs_diff"]}
    command = f"python benchmarks/speed.py --model {args.model} --threads {args.threads}" + (
        f" --limit {args.limit}" if args.limit else "")
    path = write_results("speed", results, command)
    lines = ["| dataset | method | records/s | × sentence-transformers | Abt-Buy test F1 |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['dataset']} | {r['method']} | {r['value']} | {r.get('speedup_vs_sentence_transformers', 1.0)}"
                     f" | {r.get('test_f1', '')} |")
    (RESULTS / "speed.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

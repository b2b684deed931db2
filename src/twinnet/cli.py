"""The ``twinnet`` command line: a thin face over the Python API."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from twinnet.errors import TwinnetError

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)



class _Group(typer.core.TyperGroup):
    """Turns a :class:`TwinnetError` from any command into one line on stderr and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TwinnetError as exc:
            console.print(f"[red]error[/]: {exc}", highlight=False, soft_wrap=True, markup=True)
            ctx.exit(exc.exit_code)


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode="markdown",
                  help="Siamese (twin) networks: train, calibrate, evaluate and use record matchers.")
datasets_app = typer.Typer(no_args_is_help=True, help="Benchmark datasets known by name.")
app.add_typer(datasets_app, name="datasets")

Threads = Annotated[Optional[int], typer.Option("--threads", help="CPU threads for PyTorch (default: all cores).")]


def _setup(threads: int | None, verbose: bool = False) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if threads:
        try:
            import torch
        except ImportError:  # the ONNX backend runs without PyTorch; it takes the thread count itself
            return
        torch.set_num_threads(threads)


def _load_splits(data: str, split_names: tuple[str, ...], options: dict) -> dict:
    """``data`` is a registered dataset name, a DeepMatcher folder, or a pair file."""
    from twinnet.data import read_any, read_deepmatcher_splits
    from twinnet.data import registry

    if data.lower() in registry.DATASETS and not Path(data).exists():
        folder = registry.path(data)
        splits = read_deepmatcher_splits(folder, split_names, **options)
        for name, split in splits.items():
            split.name = f"{data.lower()}/{name}"
        return splits
    path = Path(data)
    if path.is_dir():
        return read_deepmatcher_splits(path, split_names, **options)
    if not path.exists():
        raise TwinnetError(f"{data!r} is neither an existing file or folder nor a known dataset name "
                           f"({', '.join(registry.DATASETS)}; see `twinnet datasets list`)")
    return {split_names[0]: read_any(path, **options)}


def _serializer(attributes: str | None, style: str, max_chars: int, split_codes: bool = False):
    from twinnet.data import RecordSerializer

    try:
        return RecordSerializer(attributes=[a.strip() for a in attributes.split(",")] if attributes else None,
                                style=style, max_chars_per_attribute=max_chars, split_codes=split_codes)
    except ValueError as exc:
        raise TwinnetError(str(exc)) from None


Backend = Annotated[str, typer.Option("--backend", help="`torch`, `onnx` (fp32 graph from `twinnet export`) or "
                                                      "`onnx-int8` (the quantised graph).")]


def _load_model(path: Path, backend: str = "torch", threads: int | None = None):
    if backend == "torch":
        from twinnet.model import SiameseModel

        return SiameseModel.load(path)
    if backend in ("onnx", "onnx-int8"):
        from twinnet.runtime import OnnxSiameseModel

        return OnnxSiameseModel.load(path, quantized=backend == "onnx-int8", threads=threads)
    raise TwinnetError(f"--backend must be torch, onnx or onnx-int8, got {backend!r}")


# ---------------------------------------------------------------------------------------------- train
@app.command()
def train(
    data: Annotated[str, typer.Argument(help="Dataset name (`twinnet datasets list`), a DeepMatcher folder, "
                                             "or a training pair file (CSV/TSV/JSONL/Parquet/Ditto .txt).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model folder to write.")],
    valid: Annotated[Optional[Path], typer.Option(help="Validation pair file (needed with a pair file).")] = None,
    model: Annotated[str, typer.Option(help="Base text model: Hugging Face id or local folder.")] =
        "sentence-transformers/all-MiniLM-L6-v2",
    loss: Annotated[str, typer.Option(help="contrastive, online_contrastive, multiple_negatives, triplet; "
                                           "join with '+'.")] = "online_contrastive+multiple_negatives",
    epochs: Annotated[int, typer.Option(help="Passes over the training pairs.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Pairs per step.")] = 32,
    positive_batch: Annotated[int, typer.Option(help="Also train each epoch on batches of this many 'same' pairs "
                                                     "only, so in-batch negatives come from other entities "
                                                     "(0 = off).")] = 0,
    learning_rate: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 5e-5,
    max_length: Annotated[int, typer.Option(help="Tokens per record; longer ones are truncated and counted.")] = 48,
    attributes: Annotated[Optional[str], typer.Option(help="Attributes to serialise, in order, comma-separated "
                                                          "(default: all but id).")] = None,
    style: Annotated[str, typer.Option(help="Serialisation: `values` or `colval` (COL a VAL v).")] = "values",
    max_chars: Annotated[int, typer.Option(help="Cut each attribute to this many characters (0 = no cut).")] = 0,
    split_codes: Annotated[bool, typer.Option(help="Write product codes one way (KDL-40V5100 -> kdl 40 v 5100).")]
        = False,
    calibration: Annotated[str, typer.Option(help="Threshold strategy: max_f1, max_accuracy, eer, fmr, recall, "
                                                  "cost.")] = "max_f1",
    target: Annotated[Optional[float], typer.Option(help="Target for the fmr/recall strategies.")] = None,
    fmr: Annotated[Optional[float], typer.Option(help="Shortcut for --calibration fmr --target FMR: the lowest "
                                                      "threshold whose validation false-match rate is at most FMR.")]
        = None,
    probability: Annotated[str, typer.Option(help="Probability map: auto (isotonic or Platt, chosen on valid), "
                                                  "isotonic, platt, none.")] = "auto",
    cost_ratio: Annotated[float, typer.Option(help="For --calibration cost: cost of a false match relative to a "
                                                 "false non-match.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    log_file: Annotated[Optional[Path], typer.Option(help="Write one JSON line per epoch here.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model folder.")] = False,
    threads: Threads = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each epoch's numbers.")] = False,
) -> None:
    """Train a Siamese text matcher; the threshold and probability map are fitted on validation.

    Example:

        twinnet train abt-buy -o models/abt-buy --attributes name --epochs 4

        twinnet train pairs_train.csv --valid pairs_valid.csv -o models/mine
    """
    _setup(threads, verbose)
    from twinnet.model import SiameseModel
    from twinnet.training import Trainer

    if output.exists() and not overwrite:
        raise TwinnetError("model folder already exists; pass --overwrite to replace it", file=output)
    if fmr is not None:
        calibration, target = "fmr", fmr
    splits = _load_splits(data, ("train", "valid"), {})
    train_pairs = splits["train"]
    valid_pairs = splits.get("valid")
    if valid is not None:
        from twinnet.data import read_any

        valid_pairs = read_any(valid, split="valid")
    if valid_pairs is None:
        raise TwinnetError("a validation split is needed to fit the threshold: pass --valid FILE")
    for label, split in (("train", train_pairs), ("valid", valid_pairs)):
        info = split.summary()
        console.print(f"{label}: {info['pairs']} pairs ({info['positives']} same) over {info['records']} records")
    siamese = SiameseModel.for_text(model, max_length=max_length, serializer=_serializer(attributes, style, max_chars, split_codes))
    trainer = Trainer(siamese, loss=loss, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                      seed=seed, calibration=calibration, calibration_target=target, probability=probability,
                      cost_ratio=cost_ratio, positive_batch_size=positive_batch,
                      log_file=log_file)
    trainer.fit(train_pairs, valid_pairs)
    card = siamese.card_["train"]
    if card["truncated_texts"]:
        console.print(f"[yellow]note[/]: {card['truncated_texts']} of {card['distinct_texts']} distinct training "
                      f"record texts were longer than {max_length} tokens and were truncated")
    siamese.save(output)
    op = siamese.calibration_.operating_point_
    console.print(f"saved {output}  (selected epoch {siamese.card_['selected_epoch']}, threshold "
                  f"{siamese.calibration_.threshold_:.4f}, validation F1 {op['f1']:.4f})")


# ---------------------------------------------------------------------------------------------- evaluate
@app.command()
def evaluate(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model folder from `twinnet train`.")],
    data: Annotated[str, typer.Argument(help="Dataset name, DeepMatcher folder, or labelled pair file.")],
    split: Annotated[str, typer.Option(help="Split of a dataset/folder to evaluate.")] = "test",
    threshold: Annotated[Optional[float], typer.Option(help="Use this threshold instead of the stored one.")] = None,
    fmr: Annotated[Optional[float], typer.Option(help="Use the threshold for this validation false-match rate.")] = None,
    baseline: Annotated[bool, typer.Option(help="Also score the char n-gram TF-IDF baseline (needs the "
                                                "dataset's train/valid splits).")] = True,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap rounds for 95% intervals (0 = off).")] = 1000,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report as JSON.")] = None,
    update_card: Annotated[bool, typer.Option(help="Record the metrics in the model folder's card.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --output file.")] = False,
    backend: Backend = "torch",
    threads: Threads = None,
) -> None:
    """Evaluate a saved model with its stored threshold (never re-tuned on the evaluated data).

    Example:

        twinnet evaluate models/abt-buy abt-buy --split test -o abt-buy-test.json
    """
    _setup(threads)
    from twinnet.io import write_json

    if output is not None and output.exists() and not overwrite:
        raise TwinnetError("output already exists; pass --overwrite to replace it", file=output)
    siamese = _load_model(model_path, backend, threads)
    report, pairs = _run_evaluation(siamese, data, split, threshold, fmr, baseline, bootstrap)
    _print_report(report)
    if output:
        write_json(output, report.to_dict())
        console.print(f"wrote {output}")
    if update_card and threshold is None and fmr is None:
        from twinnet.modelcard import write_card_files

        siamese.card_.setdefault("evaluations", {})[pairs.name or split] = {
            k: v for k, v in report.metrics.items() if isinstance(v, (int, float))}
        write_card_files(siamese, model_path)


def _run_evaluation(siamese, data: str, split: str, threshold, fmr, baseline: bool, bootstrap: int):
    from twinnet.baselines import TfidfBaseline
    from twinnet.evaluation import evaluate as run_evaluation

    is_folder = data.lower() in _dataset_names() or Path(data).is_dir()
    names = (split, "train", "valid") if is_folder and split not in ("train", "valid") else (split,)
    splits = _load_splits(data, names, {})
    pairs = splits[split]
    tfidf = None
    if baseline and "train" in splits and "valid" in splits:
        tfidf = TfidfBaseline(siamese.serializer).fit(splits["train"], splits["valid"])
    report = run_evaluation(siamese, pairs, threshold=threshold, fmr=fmr, baseline=tfidf,
                            train=splits.get("train"), bootstrap=bootstrap)
    return report, pairs


def _dataset_names() -> set[str]:
    from twinnet.data.registry import DATASETS

    return set(DATASETS)


def _print_report(report) -> None:
    table = Table(title=f"{report.name}: threshold {report.metrics['threshold']:.4f} (from validation)")
    table.add_column("metric")
    table.add_column("twinnet", justify="right")
    table.add_column("95% interval", justify="right")
    if report.baseline:
        table.add_column("char TF-IDF", justify="right")
    for name, value, interval in report.rows():
        row = [name, value, interval]
        if report.baseline:
            base = report.baseline.get(name)
            row.append(f"{base:.4f}" if isinstance(base, float) else "")
        table.add_row(*row)
    out.print(table)
    c = report.metrics["confusion"]
    out.print(f"confusion: tp {c['tp']}  fp {c['fp']}  fn {c['fn']}  tn {c['tn']}   "
              f"(pairs {report.metrics['pairs']}, positives {report.metrics['positives']})")
    for name, sub in report.subsets.items():
        extra = f", TF-IDF F1 {sub['tfidf_f1']:.4f}" if "tfidf_f1" in sub else ""
        out.print(f"{name} records ({sub['pairs']} pairs, {sub['positives']} same): F1 {sub['f1']:.4f}{extra}")
    if report.retrieval:
        r = report.retrieval
        out.print(f"retrieval ({r['queries']} queries over {r['gallery']} records): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in r.items() if k not in ("queries", "gallery")))
    if report.truncation.truncated:
        out.print(f"note: {report.truncation.message()}")


@app.command()
def report(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model folder.")],
    data: Annotated[str, typer.Argument(help="Dataset name, DeepMatcher folder, or labelled pair file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.")],
    split: Annotated[str, typer.Option(help="Split of a dataset/folder to evaluate.")] = "test",
    bootstrap: Annotated[int, typer.Option(help="Bootstrap rounds for 95% intervals (0 = off).")] = 1000,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    threads: Threads = None,
) -> None:
    """Write one self-contained HTML report: ROC, precision-recall and DET curves, score histograms with the
    threshold, a reliability diagram, the metrics table and the hardest errors side by side.

    Example:

        twinnet report models/abt-buy abt-buy -o abt-buy-report.html
    """
    _setup(threads)
    from twinnet.report import write_report

    if output.exists() and not overwrite:
        raise TwinnetError("output already exists; pass --overwrite to replace it", file=output)
    siamese = _load_model(model_path)
    result, pairs = _run_evaluation(siamese, data, split, None, None, True, bootstrap)
    write_report(output, result, pairs, siamese.serializer, title=f"twinnet: {model_path.name} on {pairs.name}")
    console.print(f"wrote {output}")


# ---------------------------------------------------------------------------------------------- verify
@app.command()
def verify(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model folder.")],
    left: Annotated[Optional[str], typer.Argument(help="First record text.")] = None,
    right: Annotated[Optional[str], typer.Argument(help="Second record text.")] = None,
    pairs: Annotated[Optional[Path], typer.Option(help="Pair file (left/right or left_ATTR/right_ATTR "
                                                       "columns) to decide in bulk.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="With --pairs: write decisions here "
                                                                          "(.csv, .jsonl, .parquet); default: stdout "
                                                                          "as CSV. Two texts print one JSON line.")]
        = None,
    threshold: Annotated[Optional[float], typer.Option(help="Override the stored threshold.")] = None,
    fmr: Annotated[Optional[float], typer.Option(help="Decide at this validation false-match rate instead.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    backend: Backend = "torch",
    threads: Threads = None,
) -> None:
    """Decide whether records are the same: `same`, `score` and calibrated `probability`.

    Examples:

        twinnet verify models/abt-buy "sony bravia kdl-40v5100 40in lcd tv" "Sony KDL-40V5100 Bravia 40 LCD HDTV"

        twinnet verify models/abt-buy --pairs new_pairs.csv -o decisions.csv
    """
    _setup(threads)
    import pandas as pd

    from twinnet.data import read_pairs
    from twinnet.io import write_table

    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise TwinnetError(f"--threshold must be a cosine score between -1 and 1, got {threshold}")
    if pairs is not None and (left is not None or right is not None):
        raise TwinnetError("give either two record texts or --pairs FILE, not both")
    siamese = _load_model(model_path, backend, threads)
    if pairs is None:
        if left is None or right is None:
            raise TwinnetError("give two record texts, or --pairs FILE")
        d = siamese.verify(left, right, threshold=threshold, fmr=fmr)
        if siamese.last_truncation.truncated:
            console.print(f"note: {siamese.last_truncation.message()}")
        typer.echo(json.dumps({"same": d.same, "score": round(d.score, 6), "probability": round(d.probability, 6),
                               "threshold": siamese.decision_threshold(threshold, fmr=fmr)}))
        return
    if output is not None and output.exists() and not overwrite:
        raise TwinnetError("output already exists; pass --overwrite to replace it", file=output)
    data = read_pairs(pairs)
    decisions = siamese.verify(data.left, data.right, threshold=threshold, fmr=fmr)
    frame = pd.DataFrame({"row": range(2, len(data) + 2), "left_id": data.left_ids, "right_id": data.right_ids,
                          "same": [int(d.same) for d in decisions], "score": [d.score for d in decisions],
                          "probability": [d.probability for d in decisions]})
    if siamese.last_truncation.truncated:
        console.print(f"note: {siamese.last_truncation.message()}")
    if output is None:
        frame.to_csv(sys.stdout, index=False)
    else:
        write_table(frame, output, overwrite=True)
        console.print(f"wrote {len(frame)} decisions to {output}")


# ---------------------------------------------------------------------------------------------- embed
@app.command()
def embed(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model folder.")],
    records: Annotated[Path, typer.Argument(help="Records: a table (CSV/TSV/JSONL/Parquet) with a `text` column "
                                                 "or attribute columns; an `id` column is kept.")],
    output: Annotated[Path, typer.Option("--output", "-o", help=".npy (matrix) or .parquet (id + embedding).")],
    batch_size: Annotated[int, typer.Option(help="Records per forward pass.")] = 64,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    backend: Backend = "torch",
    threads: Threads = None,
) -> None:
    """Embed records with the model's encoder (L2-normalised rows).

    Example:

        twinnet embed models/abt-buy ../shared/data/er_deepmatcher_tables/Abt-Buy/tableA.csv -o abt.parquet
    """
    _setup(threads)
    import numpy as np
    import pandas as pd
    from rich.progress import Progress

    from twinnet.data.records import clean_text, is_missing
    from twinnet.io import atomic_path, read_table

    if output.suffix not in (".npy", ".parquet"):
        raise TwinnetError("output must end in .npy or .parquet", file=output)
    if output.exists() and not overwrite:
        raise TwinnetError("output already exists; pass --overwrite to replace it", file=output)
    siamese = _load_model(model_path, backend, threads)
    frame = read_table(records)
    if {"left", "right"} <= set(frame.columns) or any(str(c).startswith(("left_", "right_")) for c in frame.columns):
        raise TwinnetError("this looks like a pair file (left/right columns); embed takes one record per row "
                           "(a `text` column, or attribute columns)", file=records)
    ids = frame["id"].astype(str).tolist() if "id" in frame.columns else [str(i) for i in range(len(frame))]
    if "text" in frame.columns:
        items = frame["text"].tolist()
    else:
        items = [{k: v for k, v in row.items() if k != "id"} for row in frame.to_dict(orient="records")]
    for i, item in enumerate(items):
        empty = is_missing(item) if not isinstance(item, dict) else not any(clean_text(v) for v in item.values())
        if empty or (isinstance(item, str) and not clean_text(item)):
            raise TwinnetError("record is empty or missing", file=records, row=i + 2,
                               field="text" if "text" in frame.columns else None)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("embedding", total=len(items))
        vectors = siamese.embed(items, batch_size=batch_size, progress=lambda n: bar.advance(task, n))
    if siamese.last_truncation.truncated:
        console.print(f"note: {siamese.last_truncation.message()}")
    with atomic_path(output) as tmp:
        if output.suffix == ".npy":
            with open(tmp, "wb") as handle:
                np.save(handle, vectors)
        else:
            pd.DataFrame({"id": ids, "embedding": list(vectors)}).to_parquet(tmp, index=False)
    console.print(f"wrote {vectors.shape[0]} × {vectors.shape[1]} embeddings to {output}")


# ---------------------------------------------------------------------------------------------- export
@app.command()
def export(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model folder.")],
    format: Annotated[str, typer.Option("--format", help="Export format (onnx).")] = "onnx",
    quantize: Annotated[Optional[str], typer.Option(help="Also write a dynamically quantised graph: int8.")] = None,
    sample: Annotated[Optional[Path], typer.Option(help="Records (table with a `text` column or attribute "
                                                        "columns) for the parity check; default: built-in "
                                                        "examples.")] = None,
    threads: Threads = None,
) -> None:
    """Export to ONNX with pooling and normalisation in the graph (output = the final embedding).

    Writes MODEL/onnx/model.onnx (and model_int8.onnx) after a parity check against PyTorch:
    fp32 max |difference| <= 1e-4, int8 cosine >= 0.99 on every sample input.

    Example:

        twinnet export models/abt-buy --format onnx --quantize int8
    """
    _setup(threads)
    from twinnet.export import export_onnx

    if format != "onnx":
        raise TwinnetError(f"--format must be onnx, got {format!r}")
    texts = None
    if sample is not None:
        from twinnet.io import read_table

        siamese = _load_model(model_path)
        frame = read_table(sample).head(512)
        items = frame["text"].tolist() if "text" in frame.columns else frame.drop(columns=["id"], errors="ignore")\
            .to_dict(orient="records")
        texts = siamese.to_inputs(items)
    with console.status("exporting and checking parity"):
        report = export_onnx(model_path, quantize=quantize, sample=texts)
    line = f"wrote {model_path / 'onnx' / report['fp32']['file']} (max |diff| {report['fp32']['max_abs_diff']:.1e})"
    if "int8" in report:
        line += f" and {report['int8']['file']} (min cosine {report['int8']['min_cosine']:.4f})"
    console.print(line)


# ---------------------------------------------------------------------------------------------- serve
@app.command()
def serve(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model folder.")],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    api_key_file: Annotated[Optional[Path], typer.Option(help="File with API keys, one per line (default: the "
                                                              "TWINNET_API_KEY env var).")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Serve without an API key (loopback only).")] = False,
    max_items: Annotated[int, typer.Option(help="Items (inputs or pairs) per request.")] = 256,
    max_chars: Annotated[int, typer.Option(help="Characters per input.")] = 4096,
    max_batch: Annotated[int, typer.Option(help="Inputs per forward pass when micro-batching (1 = off).")] = 128,
    max_wait_ms: Annotated[float, typer.Option(help="How long a request waits for others to share its "
                                                    "forward pass.")] = 5.0,
    backend: Backend = "torch",
    threads: Threads = None,
) -> None:
    """Serve the model over HTTP: POST /v1/embed, POST /v1/verify, GET /v1/health, GET /v1/model, /docs.

    Requests need `X-API-Key: KEY` (or `Authorization: Bearer KEY`); keys come from TWINNET_API_KEY or
    --api-key-file.

    Example:

        TWINNET_API_KEY=s3cret twinnet serve models/abt-buy --port 8000

        curl -H 'X-API-Key: s3cret' -d '{"pairs": [{"left": "sony kdl-40v5100", "right": "sony bravia 40"}]}' \
          http://127.0.0.1:8000/v1/verify
    """
    _setup(threads)
    from twinnet.serve import ServeSettings, check_bind, create_app, load_api_keys, run

    keys = set() if no_auth else load_api_keys(api_key_file)
    check_bind(host, auth=not no_auth, keys=keys)
    settings = ServeSettings(max_items=max_items, max_chars=max_chars, max_batch=max_batch, max_wait_ms=max_wait_ms)
    siamese = _load_model(model_path, backend, threads)
    console.print(f"serving {model_path} ({backend}) on http://{host}:{port}  docs: http://{host}:{port}/docs"
                  + ("  [yellow]no authentication[/]" if no_auth else ""))
    run(create_app(siamese, api_keys=keys, settings=settings, model_folder=model_path, backend=backend),
        host=host, port=port)


# ---------------------------------------------------------------------------------------------- audit
@app.command()
def audit(
    data: Annotated[str, typer.Argument(help="Dataset name, DeepMatcher folder, or pair file(s) given with --split.")],
    extra: Annotated[Optional[list[str]], typer.Option("--split", help="NAME=FILE for more pair files "
                                                                     "(e.g. --split test=test.csv).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the findings as JSON.")] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 when leaked pairs or label conflicts are found.")] = False,
) -> None:
    """Check pair data for duplicates, label and transitivity conflicts, leakage between splits, class balance,
    empty records and near-identical records labelled different.

    Example:

        twinnet audit abt-buy --strict

        twinnet audit train.csv --split valid=valid.csv --split test=test.csv -o audit.json
    """
    _setup(None)
    from twinnet.data import read_any
    from twinnet.data.audit import audit as run_audit
    from twinnet.data.audit import format_report
    from twinnet.io import write_json

    options = {"allow_empty_records": True}
    is_folder = data.lower() in _dataset_names() or Path(data).is_dir()
    splits = _load_splits(data, ("train", "valid", "test") if is_folder else ("train",), options)
    for item in extra or []:
        name, sep, file = item.partition("=")
        if not sep:
            raise TwinnetError(f"--split needs NAME=FILE, got {item!r}")
        splits[name] = read_any(Path(file), split=name, **options)
    report = run_audit(splits)
    out.print(format_report(report), highlight=False, soft_wrap=True, markup=False)
    if output:
        write_json(output, report.to_dict())
    if strict and report.has_leakage_or_conflicts:
        console.print("[red]strict[/]: leakage or label conflicts found")
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------- datasets
@datasets_app.command("list")
def datasets_list() -> None:
    """List the benchmark datasets twinnet knows, and where each was found.

    Example:

        twinnet datasets list
    """
    from twinnet.data import registry

    table = Table()
    for column in ("name", "title", "task", "found at"):
        table.add_column(column)
    for info in registry.DATASETS.values():
        where = registry.locate(info.name)
        table.add_row(info.name, info.title, info.task,
                      str(where) if where else ("missing: `twinnet datasets fetch " + info.name + "`"
                                                if info.fetchable else "missing: place it under TWINNET_DATA_DIR"))
    out.print(table)


@datasets_app.command("fetch")
def datasets_fetch(name: Annotated[str, typer.Argument(help="Dataset name.")]) -> None:
    """Download a dataset into the user cache, verifying SHA-256 checksums (needs internet).

    Example:

        twinnet datasets fetch abt-buy
    """
    from twinnet.data import registry

    folder = registry.fetch(name, progress=lambda f: console.print(f"verified {f}"))
    typer.echo(str(folder))


@datasets_app.command("path")
def datasets_path(name: Annotated[str, typer.Argument(help="Dataset name.")]) -> None:
    """Print the folder a dataset is read from (error with instructions when it is missing).

    Example:

        twinnet datasets path abt-buy
    """
    from twinnet.data import registry

    typer.echo(str(registry.path(name)))


def main() -> None:
    try:
        app()
    except TwinnetError as exc:
        console.print(f"[red]error[/]: {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted; nothing partial was written")
        sys.exit(130)


if __name__ == "__main__":
    main()

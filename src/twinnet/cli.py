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
index_app = typer.Typer(no_args_is_help=True, help="Vector indexes: build, add, delete, search.")
app.add_typer(index_app, name="index")

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
        if registry.info(data).layout == "sts":  # graded sentence pairs: the three splits are small
            train, valid, test = registry.load_pairs(data)
            every = {"train": train, "valid": valid, "test": test}
            return {name: every[name] for name in split_names if name in every}
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


# ---------------------------------------------------------------------------------------------- image data
def _is_image_data(data: str) -> bool:
    """An image folder / zip archive, or a pair or triplet list whose cells are image paths."""
    from twinnet.data.images import is_image_collection, is_image_pair_file

    path = Path(data)
    if is_image_collection(data):
        return True
    return path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".parquet") and \
        is_image_pair_file(path)


def _image_split_settings(card: dict, data: str) -> dict | None:
    """The identity split stored in a model card when it was trained on the same image folder."""
    stored = (card or {}).get("image_data") or {}
    if stored.get("source") and Path(stored["source"]).resolve() == Path(data.partition("::")[0]).resolve():
        return stored
    return None


def _image_evaluation_pairs(siamese, data: str, split: str, seed: int = 0):
    """Labelled pairs to evaluate an image model on: a pair/triplet list as it is, or from an image folder the
    identities of ``split`` (the stored identity split when the model was trained on this folder; ``all`` =
    every identity)."""
    from twinnet.data.images import is_image_collection, read_image_pairs

    if not is_image_collection(data):
        return read_image_pairs(data)
    collection = _image_split(siamese, data, split)
    return collection.verification_pairs(negatives_per_positive=1.0, seed=seed)


def _image_split(siamese, data: str, split: str):
    """The identities of ``split`` in an image folder, by the identity split stored when the model was trained on
    it (``all`` = every identity)."""
    from twinnet.data.images import read_image_folder

    collection = read_image_folder(data)
    if split == "all":
        return collection
    stored = _image_split_settings(siamese.card_, data)
    if stored is None:
        raise TwinnetError(f"--split {split} needs the identity split of training, but this model was not trained "
                           "on this image folder; pass --split all to use every identity", file=data)
    parts = dict(zip(("train", "valid", "test"), collection.split(stored["valid_identities"],
                                                                  stored["test_identities"],
                                                                  seed=stored["split_seed"])))
    if split not in parts:
        raise TwinnetError(f"--split must be train, valid, test or all for an image folder, got {split!r}")
    return parts[split]


Backend = Annotated[str, typer.Option("--backend", help="`torch`, `torch-bf16` (bfloat16 autocast: CPUs with "
                                                      "AVX512-BF16/AMX, or GPUs), `onnx` (fp32 graph from "
                                                      "`twinnet export`) or `onnx-int8` (the quantised graph).")]


def _load_model(path: Path, backend: str = "torch", threads: int | None = None):
    if backend in ("torch", "torch-bf16"):
        from twinnet.model import SiameseModel

        return SiameseModel.load(path).set_inference_precision("bf16" if backend == "torch-bf16" else "fp32")
    if backend in ("onnx", "onnx-int8"):
        from twinnet.runtime import OnnxSiameseModel

        return OnnxSiameseModel.load(path, quantized=backend == "onnx-int8", threads=threads)
    raise TwinnetError(f"--backend must be torch, torch-bf16, onnx or onnx-int8, got {backend!r}")


def _embed_file(model, path: Path, *, batch_size: int = 64, ignore: tuple[str, ...] = (),
                chunk_rows: int = 50_000):
    """Embed a records table chunk by chunk with a progress bar; returns (ids, embeddings)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from twinnet.data.readers import iter_records
    from twinnet.dedup import embed_in_chunks

    truncated = 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(f"embedding {path.name}", total=None)

        def counted(chunks):
            nonlocal truncated
            for ids, records in chunks:
                yield ids, records
                truncated += model.last_truncation.truncated

        ids, vectors = embed_in_chunks(model, counted(iter_records(path, ignore=ignore, chunk_rows=chunk_rows)),
                                       batch_size=batch_size, progress=lambda n: bar.advance(task, n))
    if truncated:
        console.print(f"note: {truncated} of {len(ids)} records were longer than the maximum length and were "
                      "truncated")
    return ids, vectors


# ---------------------------------------------------------------------------------------------- train
@app.command()
def train(
    data: Annotated[str, typer.Argument(help="Dataset name (`twinnet datasets list`), a DeepMatcher folder, "
                                             "or a training pair file (CSV/TSV/JSONL/Parquet/Ditto .txt).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model folder to write.")],
    valid: Annotated[Optional[Path], typer.Option(help="Validation pair file (needed with a pair file).")] = None,
    model: Annotated[str, typer.Option(help="Base text model: Hugging Face id or local folder.")] =
        "sentence-transformers/all-MiniLM-L6-v2",
    loss: Annotated[str, typer.Option(help="contrastive, online_contrastive, multiple_negatives, triplet, "
                                           "batch_hard_triplet, semi_hard_triplet, supcon, multi_similarity; "
                                           "graded pairs: cosent, cosine_regression; join with '+'.")] =
        "online_contrastive+multiple_negatives",
    epochs: Annotated[int, typer.Option(help="Passes over the training pairs.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Pairs per step.")] = 32,
    positive_batch: Annotated[int, typer.Option(help="Also train each epoch on batches of this many 'same' pairs "
                                                     "only, so in-batch negatives come from other entities "
                                                     "(0 = off).")] = 0,
    hard_negatives: Annotated[int, typer.Option(help="Before each epoch, add up to this many model-mined 'different' "
                                                     "pairs per matched record: its nearest records of other "
                                                     "entities (0 = off).")] = 0,
    learning_rate: Annotated[Optional[float], typer.Option("--lr", help="AdamW learning rate (default 5e-5 for "
                                                                        "text, 1e-3 for image encoders).")] = None,
    encoder: Annotated[str, typer.Option(help="`text` (a transformer, --model); an image CNN built from "
                                              "scratch: `koch` or `resnet`; or `face`: pretrained dlib face "
                                              "descriptors with a trainable head (pip install "
                                              "'twinnet[faces]').")] = "text",
    image_size: Annotated[int, typer.Option(help="Image encoders: pixels per side; every image is resized to "
                                                 "it.")] = 35,
    channels: Annotated[int, typer.Option(help="Image encoders: 1 (grey) or 3 (RGB).")] = 1,
    embedding_dim: Annotated[int, typer.Option(help="Image encoders: embedding size.")] = 128,
    augment: Annotated[bool, typer.Option(help="Image encoders: random rotation, shear, scale, shift, brightness "
                                               "and contrast while training.")] = True,
    invert: Annotated[bool, typer.Option(help="Image encoders: use 1 - pixel (dark ink on white paper).")] = False,
    resize: Annotated[str, typer.Option(help="Image encoders: `stretch` to the size, or `crop` the centre to its "
                                             "aspect first.")] = "stretch",
    backbone_weights: Annotated[Optional[Path], typer.Option(help="Image encoders: initialise the convolutional "
                                                                  "layers from this .safetensors file.")] = None,
    valid_identities: Annotated[float, typer.Option(help="Image folders: share (or number) of identities held "
                                                         "out for validation.")] = 0.15,
    test_identities: Annotated[float, typer.Option(help="Image folders: share (or number) of identities held out "
                                                        "for testing (never trained on).")] = 0.15,
    split_seed: Annotated[int, typer.Option(help="Image folders: seed of the identity split.")] = 0,
    per_class: Annotated[int, typer.Option(help="Image folders: images of one identity grouped in a batch.")] = 4,
    negatives: Annotated[int, typer.Option(help="Image folders: 'different' pairs per group.")] = 1,
    rotations: Annotated[bool, typer.Option(help="Image folders: add each training identity turned by 90/180/270 "
                                                 "degrees as new identities (characters, not faces).")] = False,
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
    sampler: Annotated[str, typer.Option(help="`pairs` (record-grouped pair batches) or `m_per_class` (entity "
                                               "batches built from the training positives, --m records per "
                                               "entity; for supcon, multi_similarity, batch_hard_triplet, "
                                               "semi_hard_triplet).")] = "pairs",
    m: Annotated[int, typer.Option("--m", help="Records per entity in an m_per_class batch.")] = 4,
    batch_order: Annotated[str, typer.Option(help="Pair batches: `shuffle` (left records in random order) or "
                                                   "`graph` (left records sharing candidates batched together: "
                                                   "fewer records to encode).")] = "shuffle",
    pair_stage_epochs: Annotated[int, typer.Option(help="Second stage: this many more epochs on pair batches with "
                                                        "--pair-stage-loss (0 = none).")] = 0,
    pair_stage_loss: Annotated[str, typer.Option(help="Loss of the second stage.")] =
        "online_contrastive+multiple_negatives",
    augment_text: Annotated[Optional[str], typer.Option(help="Text record augmentation, seeded, e.g. "
                                                             "`token_deletion=0.1,span_shuffle=0.1,"
                                                             "attribute_drop=0.1,value_swap=0.2` (default off).")]
        = None,
    accumulation_steps: Annotated[int, typer.Option(help="Batches whose gradients are added up before each "
                                                         "optimizer step.")] = 1,
    encode_chunk_size: Annotated[int, typer.Option(help="Encode each batch's records in length-sorted chunks of at "
                                                        "most this many, cut where padding would waste tokens "
                                                        "(same loss, about 1.2x faster on CPU with 32; 0 = one "
                                                        "pass).")] = 0,
    mixed_precision: Annotated[str, typer.Option(help="auto (bf16, else fp16, on a CUDA GPU; off on CPU), no, "
                                                      "bf16, fp16.")] = "auto",
    checkpoint_dir: Annotated[Optional[Path], typer.Option(help="Write a resumable checkpoint here after each "
                                                                "epoch (safetensors + JSON; the newest 2 kept).")]
        = None,
    resume_from: Annotated[Optional[Path], typer.Option(help="Continue from a checkpoint (an epoch-N folder, or a "
                                                             "--checkpoint-dir for its newest); the same data and "
                                                             "options end as the uninterrupted run.")] = None,
    log_file: Annotated[Optional[Path], typer.Option(help="Write one JSON line per epoch here.")] = None,
    tensorboard_dir: Annotated[Optional[Path], typer.Option(help="Also write TensorBoard scalars here (when "
                                                                 "tensorboard is installed).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model folder.")] = False,
    threads: Threads = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each epoch's numbers.")] = False,
) -> None:
    """Train a Siamese text matcher; the threshold and probability map are fitted on validation.

    Graded pairs (`stsb`, or a pair file with a `score` column) train with `--loss cosent` (or
    `cosine_regression`): the epoch is chosen on validation Spearman and no threshold is fitted. Under
    `torchrun --nproc_per_node N -m twinnet train ...` each process trains on its share of the batches and
    only rank 0 writes the model.

    Example:

        twinnet train abt-buy -o models/abt-buy --attributes name --epochs 4

        twinnet train abt-buy -o models/abt-buy-supcon --loss supcon --sampler m_per_class --pair-stage-epochs 2

        twinnet train stsb -o models/stsb --loss cosent --max-length 64 --lr 2e-5

        twinnet train pairs_train.csv --valid pairs_valid.csv -o models/mine
    """
    _setup(threads, verbose)
    from twinnet.model import SiameseModel
    from twinnet.training import Trainer, check_choices

    if output.exists() and not overwrite:
        raise TwinnetError("model folder already exists; pass --overwrite to replace it", file=output)
    # before any data is read, so a typo costs nothing
    check_choices(batch_order=batch_order, sampler=sampler, mixed_precision=mixed_precision)
    if fmr is not None:
        calibration, target = "fmr", fmr
    image_card = None
    if _is_image_data(data):
        from twinnet.data.images import is_image_collection, read_image_folder, read_image_pairs

        if encoder == "text":
            raise TwinnetError(f"{data} holds images; choose an image encoder: --encoder koch, resnet or face")
        if is_image_collection(data):
            collection = read_image_folder(data)
            train_set, valid_set, test_set = collection.split(valid_identities, test_identities, seed=split_seed)
            console.print(f"identities: {len(train_set.identity_names)} train, {len(valid_set.identity_names)} "
                          f"valid, {len(test_set.identity_names)} test (disjoint, split seed {split_seed})")
            train_pairs = (train_set.with_rotations() if rotations else train_set).training_pairs(
                per_class, negatives, seed=seed)
            valid_pairs = valid_set.verification_pairs(seed=seed)
            image_card = {"source": str(Path(data.partition("::")[0]).resolve()) + (
                          f"::{data.partition('::')[2]}" if "::" in data else ""),
                          "split_seed": split_seed, "valid_identities": valid_identities,
                          "test_identities": test_identities, "rotations": rotations,
                          "identities": {"train": len(train_set.identity_names),
                                         "valid": len(valid_set.identity_names),
                                         "test": len(test_set.identity_names)},
                          "test_identity_names": test_set.identity_names}
        else:
            train_pairs = read_image_pairs(data)
            if valid is None:
                raise TwinnetError("a validation list is needed to fit the threshold: pass --valid FILE")
            valid_pairs = read_image_pairs(valid)
    else:
        if encoder != "text":
            from twinnet.data.registry import DATASETS

            if "::" not in str(data) and data.lower() not in DATASETS and not Path(data).exists():
                raise TwinnetError("no such file or folder", file=data)
            raise TwinnetError(f"--encoder {encoder} reads images: pass an image folder (root/<identity>/<image>), "
                               "a .zip of one, or a pair/triplet list of image paths", file=data)
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
        kind = (f"graded {split.scores.min():g}-{split.scores.max():g}" if getattr(split, "is_graded", False)
                else f"{info['positives']} same" if info["positives"] >= 0 else "unlabelled")
        console.print(f"{label}: {info['pairs']} pairs ({kind}) over {info['records']} records")
    if encoder == "text":
        siamese = SiameseModel.for_text(model, max_length=max_length,
                                        serializer=_serializer(attributes, style, max_chars, split_codes))
    elif encoder in ("koch", "resnet"):
        siamese = SiameseModel.for_image(encoder, image_size=image_size, channels=channels,
                                         embedding_dim=embedding_dim, augment=augment, invert=invert, resize=resize,
                                         seed=seed, backbone_weights=backbone_weights)
    elif encoder == "face":
        siamese = SiameseModel.for_faces(embedding_dim, seed=seed)
    else:
        raise TwinnetError(f"--encoder must be text, koch, resnet or face, got {encoder!r}")
    if learning_rate is None:
        learning_rate = 5e-5 if encoder == "text" else 1e-3  # fine-tuning a transformer vs a CNN from scratch
    trainer = Trainer(siamese, loss=loss, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                      seed=seed, calibration=calibration, calibration_target=target, probability=probability,
                      cost_ratio=cost_ratio, positive_batch_size=positive_batch, hard_negatives=hard_negatives,
                      sampler=sampler, m=m, batch_order=batch_order, pair_stage_epochs=pair_stage_epochs,
                      pair_stage_loss=pair_stage_loss,
                      augment=augment_text, accumulation_steps=accumulation_steps,
                      encode_chunk_size=encode_chunk_size, mixed_precision=mixed_precision,
                      checkpoint_dir=checkpoint_dir, resume_from=resume_from, log_file=log_file,
                      tensorboard_dir=tensorboard_dir)
    trainer.fit(train_pairs, valid_pairs)
    if trainer.rank_ != 0:  # a data-parallel run: rank 0 writes the one model
        return
    if image_card is not None:
        siamese.card_["image_data"] = image_card
    card = siamese.card_["train"]
    if card["truncated_texts"]:
        console.print(f"[yellow]note[/]: {card['truncated_texts']} of {card['distinct_texts']} distinct training "
                      f"record texts were longer than {max_length} tokens and were truncated")
    siamese.save(output)
    if siamese.calibration_ is None:  # graded pairs: no threshold; the epoch was chosen on validation Spearman
        selected = next(h for h in siamese.card_["history"] if h["epoch"] == siamese.card_["selected_epoch"])
        console.print(f"saved {output}  (selected epoch {siamese.card_['selected_epoch']}, validation Spearman "
                      f"{selected['valid_spearman']:.4f})")
        return
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

        from twinnet.evaluation import hardest_errors

        siamese.card_.setdefault("evaluations", {})[pairs.name or split] = {
            k: v for k, v in report.metrics.items() if isinstance(v, (int, float))}
        siamese.card_.setdefault("hardest_errors", {})[pairs.name or split] = hardest_errors(
            report, pairs, siamese, per_kind=3)
        write_card_files(siamese, model_path)


def _run_evaluation(siamese, data: str, split: str, threshold, fmr, baseline: bool, bootstrap: int):
    from twinnet.baselines import TfidfBaseline
    from twinnet.evaluation import evaluate as run_evaluation

    if siamese.input_modality == "image" or _is_image_data(data):
        # images have no text baseline; the pairs come from the folder's held-out identities or a pair list
        pairs = _image_evaluation_pairs(siamese, data, split)
        report = run_evaluation(siamese, pairs, threshold=threshold, fmr=fmr, bootstrap=bootstrap)
        return report, pairs
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
    left: Annotated[Optional[str], typer.Argument(help="First record text (image models: image path).")] = None,
    right: Annotated[Optional[str], typer.Argument(help="Second record text (image models: image path).")] = None,
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

        twinnet verify models/faces a.png b.png
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
    if _is_image_data(str(pairs)):
        from twinnet.data.images import read_image_pairs

        data = read_image_pairs(pairs)
    else:
        data = read_pairs(pairs)
    decisions = siamese.verify(data.left, data.right, threshold=threshold, fmr=fmr)
    from twinnet.io import first_row

    start = first_row(pairs)
    frame = pd.DataFrame({"row": range(start, start + len(data)), "left_id": data.left_ids, "right_id": data.right_ids,
                          "same": [int(d.same) for d in decisions], "score": [d.score for d in decisions],
                          "probability": [d.probability for d in decisions]})
    if not _is_image_data(str(pairs)):
        # a pair file without id columns gets content-hash ids, which nobody can read: show the text compared
        from twinnet.data.pairs import record_id

        for position, side, records, ids in ((3, "left", data.left, data.left_ids),
                                             (4, "right", data.right, data.right_ids)):
            if all(i == record_id(r) for r, i in zip(records, ids)):
                frame.insert(position, side, [r if isinstance(r, str) else siamese.serializer(r) for r in records])
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
                                                 "or attribute columns; an `id` column is kept. Image models: an "
                                                 "image folder or .zip, or a table with an `image` column.")],
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

    from twinnet.io import atomic_path

    if output.suffix not in (".npy", ".parquet"):
        raise TwinnetError("output must end in .npy or .parquet", file=output)
    if output.exists() and not overwrite:
        raise TwinnetError("output already exists; pass --overwrite to replace it", file=output)
    siamese = _load_model(model_path, backend, threads)
    if siamese.input_modality == "image":
        from twinnet.data.images import image_records

        ids, images = image_records(records)
        vectors = siamese.embed(images, batch_size=batch_size)
    else:
        ids, vectors = _embed_file(siamese, records, batch_size=batch_size)
    with atomic_path(output) as tmp:
        if output.suffix == ".npy":
            with open(tmp, "wb") as handle:
                np.save(handle, vectors)
        else:
            pd.DataFrame({"id": ids, "embedding": list(vectors)}).to_parquet(tmp, index=False)
    console.print(f"wrote {vectors.shape[0]} × {vectors.shape[1]} embeddings to {output}")


# ---------------------------------------------------------------------------------------------- oneshot
@app.command()
def oneshot(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model folder of an image model.")],
    data: Annotated[str, typer.Argument(help="Omniglot's all_runs.zip (or its folder) for the 20 official runs, "
                                             "or an image folder / .zip to sample tasks from.")],
    ways: Annotated[int, typer.Option(help="Classes per sampled task.")] = 20,
    episodes: Annotated[int, typer.Option(help="Sampled tasks.")] = 100,
    queries: Annotated[int, typer.Option(help="Queries per class in a sampled task.")] = 1,
    split: Annotated[str, typer.Option(help="Image folder: `all` identities, or `test` / `valid` of the model's "
                                            "stored identity split (when it was trained on this folder).")] = "all",
    seed: Annotated[int, typer.Option(help="Seed for sampling tasks.")] = 0,
    pixel_baseline: Annotated[bool, typer.Option(help="Also report nearest neighbour in pixel space.")] = True,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the result as JSON.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --output file.")] = False,
    threads: Threads = None,
) -> None:
    """N-way one-shot accuracy: with one example per class, name the class of each query (nearest example by the
    model's cosine score).

    Examples:

        twinnet oneshot models/omniglot ../shared/data/omniglot/all_runs.zip

        twinnet oneshot models/mnist digits/ --ways 5 --episodes 1000
    """
    _setup(threads)
    from twinnet.io import write_json
    from twinnet.oneshot import PixelEmbedder, one_shot_accuracy, read_omniglot_runs, sample_tasks

    if output is not None and output.exists() and not overwrite:
        raise TwinnetError("output already exists; pass --overwrite to replace it", file=output)
    siamese = _load_model(model_path)
    if siamese.input_modality != "image":
        raise TwinnetError("one-shot evaluation needs an image model", file=model_path)
    container = Path(data.partition("::")[0])
    if not container.exists():
        raise TwinnetError("not found", file=data)
    is_runs = (container.is_dir() and any(container.glob("*/class_labels.txt"))) or (
        container.suffix == ".zip" and "::" not in data and _zip_has_runs(container))
    if is_runs:
        tasks = read_omniglot_runs(container)
        source = "official runs"
    else:
        collection = _image_split(siamese, data, split)
        tasks = sample_tasks(collection, ways, episodes=episodes, queries_per_class=queries, seed=seed)
        source = f"{len(tasks)} sampled tasks (seed {seed})"
    result = one_shot_accuracy(siamese, tasks).to_dict()
    line = f"{result['ways']}-way one-shot accuracy: {result['accuracy']:.2f}% over {result['queries']} queries ({source})"
    if pixel_baseline:
        encoder = siamese.encoder
        pixels = one_shot_accuracy(PixelEmbedder(encoder.image_size, encoder.channels, encoder.resize), tasks,
                                   similarity="euclidean")
        result["pixel_baseline_accuracy"] = pixels.accuracy
        line += f"; pixel nearest neighbour {pixels.accuracy:.2f}%"
    out.print(line, highlight=False)
    if output:
        write_json(output, result)
        console.print(f"wrote {output}")


def _zip_has_runs(path: Path) -> bool:
    import zipfile

    try:
        return any(n.endswith("class_labels.txt") for n in zipfile.ZipFile(path).namelist())
    except zipfile.BadZipFile:
        raise TwinnetError("not a zip archive", file=path) from None


# ---------------------------------------------------------------------------------------------- export
@app.command()
def export(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model folder.")],
    format: Annotated[str, typer.Option("--format", help="Export format (onnx).")] = "onnx",
    quantize: Annotated[Optional[str], typer.Option(help="Also write a dynamically quantised graph: int8.")] = None,
    sample: Annotated[Optional[Path], typer.Option(help="Records (table with a `text` column or attribute "
                                                        "columns; the first 512 are used) for the parity check; "
                                                        "default: built-in examples.")] = None,
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
    records = None
    if sample is not None:
        from twinnet.data.readers import read_records

        records = read_records(sample)[1][:512]
    with console.status("exporting and checking parity"):
        report = export_onnx(model_path, quantize=quantize, sample=records)
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
    index_dir: Annotated[Optional[Path], typer.Option("--index", help="Index folder (built with this model) "
                                                                     "to answer POST /v1/search.")] = None,
    backend: Backend = "torch",
    threads: Threads = None,
) -> None:
    """Serve the model over HTTP: POST /v1/embed, /v1/verify, /v1/search (with --index), GET /v1/health,
    GET /v1/model, /docs.

    Requests need `X-API-Key: KEY` (or `Authorization: Bearer KEY`); keys come from TWINNET_API_KEY or
    --api-key-file.

    Example:

        TWINNET_API_KEY=s3cret twinnet serve models/abt-buy --port 8000

        curl -H 'X-API-Key: s3cret' -H 'Content-Type: application/json' \
          -d '{"pairs": [{"left": "sony kdl-40v5100", "right": "sony bravia 40"}]}' \
          http://127.0.0.1:8000/v1/verify
    """
    _setup(threads)
    from twinnet.serve import ServeSettings, check_bind, check_servable, create_app, load_api_keys, run

    settings = ServeSettings(max_items=max_items, max_chars=max_chars, max_batch=max_batch, max_wait_ms=max_wait_ms)
    siamese = _load_model(model_path, backend, threads)
    check_servable(siamese)  # before asking for keys a user would set up for nothing
    keys = set() if no_auth else load_api_keys(api_key_file)
    check_bind(host, auth=not no_auth, keys=keys)
    index = None
    if index_dir is not None:
        from twinnet.index import VectorIndex

        index = VectorIndex.load(index_dir, model=siamese)
    app = create_app(siamese, api_keys=keys, settings=settings, model_folder=model_path, backend=backend, index=index)
    console.print(f"serving {model_path} ({backend}) on http://{host}:{port}  docs: http://{host}:{port}/docs"
                  + ("  [yellow]no authentication[/]" if no_auth else ""))
    run(app, host=host, port=port)


# ---------------------------------------------------------------------------------------------- index
Ignore = Annotated[Optional[str], typer.Option(help="Columns to leave out of the records, comma-separated "
                                                   "(e.g. a ground-truth column).")]
IndexKind = Annotated[str, typer.Option("--kind", help="flat (exact), hnsw, ivf, ivfsq or ivfpq; auto = flat up "
                                                       "to 200k records, ivfsq beyond.")]


def _columns(value: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in value.split(",") if c.strip()) if value else ()


def _index_model(index_dir: Path, model_path: Path | None, backend: str, threads: int | None):
    """The model an index is used with: --model, else the folder recorded in the manifest; checked by fingerprint."""
    from twinnet.index import VectorIndex

    index = VectorIndex.load(index_dir)
    if model_path is None:
        recorded = json.loads((index_dir / "manifest.json").read_text()).get("model_path")
        if not recorded:
            raise TwinnetError("this index records no model folder; pass --model", file=index_dir)
        model_path = Path(recorded)
    model = _load_model(model_path, backend, threads)
    index.check_model(model)
    return index, model, model_path


def _save_index(index, folder: Path, model_path: Path, overwrite: bool = True) -> None:
    index.save(folder, overwrite=overwrite)
    manifest_file = folder / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["model_path"] = str(model_path.resolve())
    from twinnet.io import atomic_path

    with atomic_path(manifest_file) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")


@index_app.command("build")
def index_build(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model folder.")],
    records: Annotated[Path, typer.Argument(help="Records table (CSV/TSV/JSONL/Parquet): `id` plus a `text` "
                                                 "column or attribute columns.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Index folder to write.")],
    kind: IndexKind = "auto",
    ignore: Ignore = None,
    metadata: Annotated[bool, typer.Option(help="Store the records' columns and return them with hits.")] = True,
    batch_size: Annotated[int, typer.Option(help="Records per forward pass.")] = 64,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing index folder.")] = False,
    backend: Backend = "torch",
    threads: Threads = None,
) -> None:
    """Embed a table of records and index it for search.

    Example:

        twinnet index build models/abt-buy ../shared/data/er_deepmatcher_tables/Abt-Buy/tableB.csv -o buy-index
    """
    _setup(threads)
    from twinnet.dedup import auto_index_kind
    from twinnet.index import VectorIndex

    if output.exists() and not overwrite:
        raise TwinnetError("index folder already exists; pass --overwrite to replace it", file=output)
    model = _load_model(model_path, backend, threads)
    ids, vectors = _embed_file(model, records, batch_size=batch_size, ignore=_columns(ignore))
    index = VectorIndex(vectors.shape[1], kind=auto_index_kind(kind, len(ids)),
                        model_fingerprint=model.fingerprint(), model_name=str(model_path))
    index.add(ids, vectors)
    if metadata:
        from twinnet.io import read_table

        index.set_metadata(read_table(records).fillna("").astype(str))
    _save_index(index, output, model_path)
    console.print(f"indexed {len(index)} records ({index.kind}, {index.dimension} dimensions) in {output}")


@index_app.command("add")
def index_add(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")],
    records: Annotated[Path, typer.Argument(help="Records table; an id already in the index is replaced.")],
    model_path: Annotated[Optional[Path], typer.Option("--model", help="Model folder (default: the one the "
                                                                       "index was built with).")] = None,
    ignore: Ignore = None,
    batch_size: Annotated[int, typer.Option(help="Records per forward pass.")] = 64,
    backend: Backend = "torch",
    threads: Threads = None,
) -> None:
    """Add or replace (upsert) records in an index.

    Example:

        twinnet index add buy-index new_listings.csv
    """
    _setup(threads)
    index, model, model_path = _index_model(index_dir, model_path, backend, threads)
    ids, vectors = _embed_file(model, records, batch_size=batch_size, ignore=_columns(ignore))
    replaced = sum(1 for i in ids if i in index)
    index.add(ids, vectors)
    if index.metadata is not None:
        from twinnet.io import read_table

        index.set_metadata(read_table(records).fillna("").astype(str))
    _save_index(index, index_dir, model_path)
    console.print(f"added {len(ids) - replaced} and replaced {replaced} records; the index holds {len(index)}")


@index_app.command("delete")
def index_delete(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")],
    ids: Annotated[list[str], typer.Argument(help="Record ids to remove.")],
) -> None:
    """Remove records by id (unknown ids are reported, not an error).

    Example:

        twinnet index delete buy-index 1042 1043
    """
    from twinnet.index import VectorIndex

    index = VectorIndex.load(index_dir)
    model_path = json.loads((index_dir / "manifest.json").read_text()).get("model_path", "")
    removed = index.delete(ids)
    _save_index(index, index_dir, Path(model_path))
    unknown = len(set(ids)) - removed
    console.print(f"removed {removed} records" + (f"; {unknown} ids were not in the index" if unknown else "")
                  + f"; the index holds {len(index)}")


@index_app.command("search")
def index_search(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")],
    query: Annotated[Optional[str], typer.Argument(help="A query record as text.")] = None,
    queries: Annotated[Optional[Path], typer.Option(help="A table of query records (batch search).")] = None,
    by_id: Annotated[Optional[str], typer.Option("--id", help="Search with a record already in the index.")] = None,
    k: Annotated[int, typer.Option("-k", help="Hits per query.")] = 10,
    model_path: Annotated[Optional[Path], typer.Option("--model", help="Model folder (default: the one the "
                                                                       "index was built with).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write hits as CSV/JSONL/Parquet "
                                                                          "(query_id, rank, id, score, "
                                                                          "probability).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    backend: Backend = "torch",
    threads: Threads = None,
) -> None:
    """Find the most similar records, with score and calibrated probability of "same".

    Example:

        twinnet index search buy-index "sony bravia kdl-40v5100" -k 5
    """
    _setup(threads)
    import numpy as np
    import pandas as pd

    from twinnet.io import write_table

    if sum(x is not None for x in (query, queries, by_id)) != 1:
        raise TwinnetError("give exactly one of: a QUERY text, --queries FILE or --id ID")
    if output is not None and output.exists() and not overwrite:
        raise TwinnetError("output already exists; pass --overwrite to replace it", file=output)
    index, model, _ = _index_model(index_dir, model_path, backend, threads)
    if by_id is not None:
        if by_id not in index:
            raise TwinnetError(f"id {by_id!r} is not in the index", file=index_dir)
        query_ids, vectors = [by_id], None
    elif queries is not None:
        query_ids, vectors = _embed_file(model, queries)
    else:
        if not query.strip():
            raise TwinnetError("the query is empty")
        query_ids, vectors = ["query"], model.embed([query])
    if vectors is None:
        vectors = index.reconstruct([by_id])
    found = index.search(vectors, k)
    probabilities = model.predict_proba_scores(np.nan_to_num(found.scores.ravel()).astype(np.float64))
    rows = []
    for q, query_id in enumerate(query_ids):
        for rank, hit in enumerate(found.hits(q), start=1):
            p = probabilities[q * found.scores.shape[1] + rank - 1]
            row = {"query_id": query_id, "rank": rank, "id": hit["id"], "score": round(hit["score"], 6),
                   "probability": None if np.isnan(p) else round(float(p), 6)}
            if index.metadata is not None and hit["id"] in index.metadata.index:
                row.update({f"hit_{c}": v for c, v in index.metadata.loc[hit["id"]].items()})
            rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else ["query_id", "rank", "id", "score", "probability"])
    if output is not None:
        write_table(frame, output)
        console.print(f"wrote {len(frame)} hits for {len(query_ids)} queries to {output}")
    elif not sys.stdout.isatty():
        frame.to_csv(sys.stdout, index=False)
    else:
        table = Table()
        for column in frame.columns:
            table.add_column(str(column))
        for row in frame.itertuples(index=False):
            table.add_row(*(str(v) for v in row))
        out.print(table)


# ---------------------------------------------------------------------------------------------- dedup / link
Clustering = Annotated[str, typer.Option(help="centre (default; resists chaining), components (connected "
                                              "components: any chain of matches merges) or one_to_one.")]
PairsOutput = Annotated[Optional[Path], typer.Option("--pairs", help="Also write the matched pairs (left_id, "
                                                                     "right_id, score, probability, in_cluster).")]
Neighbours = Annotated[int, typer.Option("-k", help="Nearest neighbours per record considered as candidates.")]
ThresholdOverride = Annotated[Optional[float], typer.Option("--threshold", help="Override the stored threshold.")]
BatchSize = Annotated[int, typer.Option(help="Records per forward pass.")]
Overwrite = Annotated[bool, typer.Option(help="Replace existing output files.")]


def _refuse_existing(output: Path, pairs_output: Path | None, overwrite: bool) -> None:
    """Checked before any embedding, so an existing output stops the command at once, not after the work."""
    for path in (output, pairs_output):
        if path is not None and path.exists() and not overwrite:
            raise TwinnetError("output already exists; pass --overwrite to replace it", file=path)


def _write_match_result(result, output: Path, pairs_output: Path | None, overwrite: bool) -> None:
    from twinnet.io import write_table

    _refuse_existing(output, pairs_output, overwrite)  # again: a file may have appeared meanwhile
    write_table(result.clusters, output)
    if pairs_output is not None:
        write_table(result.pairs, pairs_output)
    stats = result.stats
    console.print(f"{stats['candidates']} candidate pairs, {stats['kept_pairs']} at or above the threshold "
                  f"{stats['threshold']:.4f}; {stats['clusters_with_2_or_more']} clusters of 2 or more "
                  f"({stats['clustering']}); wrote {output}" + (f" and {pairs_output}" if pairs_output else ""))


@app.command()
def dedup(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model folder (calibrated).")],
    table: Annotated[Path, typer.Argument(help="Records table: `id` plus a `text` column or attribute columns.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Cluster per record (id, cluster) as "
                                                                "CSV/JSONL/Parquet.")],
    pairs_output: PairsOutput = None,
    k: Neighbours = 10,
    threshold: ThresholdOverride = None,
    clustering: Clustering = "centre",
    kind: IndexKind = "auto",
    ignore: Ignore = None,
    batch_size: BatchSize = 64,
    overwrite: Overwrite = False,
    backend: Backend = "torch",
    threads: Threads = None,
) -> None:
    """Find duplicates in one collection: embed -> k-NN blocking -> calibrated verification -> clustering.

    Memory grows with records x (dimension + k), never records x records.

    Example:

        twinnet dedup models/products catalogue.csv -o clusters.csv --pairs matches.csv
    """
    _setup(threads)
    _refuse_existing(output, pairs_output, overwrite)
    from twinnet.dedup import probability_map, deduplicate_embeddings

    model = _load_model(model_path, backend, threads)
    cut = model.decision_threshold(threshold)
    ids, vectors = _embed_file(model, table, batch_size=batch_size, ignore=_columns(ignore))
    result = deduplicate_embeddings(vectors, ids, threshold=cut, k=k, clustering=clustering, index_kind=kind,
                                    probability=probability_map(model))
    _write_match_result(result, output, pairs_output, overwrite)


@app.command()
def link(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model folder (calibrated).")],
    table_a: Annotated[Path, typer.Argument(metavar="A", help="First records table.")],
    table_b: Annotated[Path, typer.Argument(metavar="B", help="Second records table.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Cluster per record (id, source, cluster).")],
    pairs_output: PairsOutput = None,
    k: Neighbours = 10,
    threshold: ThresholdOverride = None,
    clustering: Clustering = "centre",
    kind: IndexKind = "auto",
    ignore: Ignore = None,
    batch_size: BatchSize = 64,
    overwrite: Overwrite = False,
    backend: Backend = "torch",
    threads: Threads = None,
) -> None:
    """Link two collections: each record of A against its k nearest records of B, verified and clustered.

    Example:

        twinnet link models/abt-buy Abt-Buy/tableA.csv Abt-Buy/tableB.csv -o links.csv --pairs pairs.csv \
          --clustering one_to_one
    """
    _setup(threads)
    _refuse_existing(output, pairs_output, overwrite)
    from twinnet.dedup import probability_map, link_embeddings

    model = _load_model(model_path, backend, threads)
    cut = model.decision_threshold(threshold)
    ids_a, vectors_a = _embed_file(model, table_a, batch_size=batch_size, ignore=_columns(ignore))
    ids_b, vectors_b = _embed_file(model, table_b, batch_size=batch_size, ignore=_columns(ignore))
    result = link_embeddings(vectors_a, ids_a, vectors_b, ids_b, threshold=cut, k=k, clustering=clustering,
                             index_kind=kind, probability=probability_map(model))
    _write_match_result(result, output, pairs_output, overwrite)


@app.command()
def synth(
    output: Annotated[Path, typer.Option("--output", "-o", help="Table to write (CSV/TSV/JSONL/Parquet).")],
    records: Annotated[int, typer.Option("-n", "--records", help="Number of records.")] = 10_000,
    duplicates: Annotated[float, typer.Option(help="Fraction of records that are extra listings of an entity.")] = 0.3,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Write a synthetic product collection with known duplicates (column `entity_id` is the truth).

    Example:

        twinnet synth -n 100000 -o products.parquet && twinnet dedup MODEL products.parquet --ignore entity_id -o c.csv
    """
    from twinnet.data.synth import synthesize_products
    from twinnet.io import write_table

    if output.exists() and not overwrite:
        raise TwinnetError("output already exists; pass --overwrite to replace it", file=output)
    frame = synthesize_products(records, duplicate_fraction=duplicates, seed=seed)
    write_table(frame, output)
    console.print(f"wrote {len(frame)} records of {frame['entity_id'].nunique()} entities to {output}")


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
    table.add_column("name", no_wrap=True)
    table.add_column("title")
    table.add_column("task")
    # the path is what people copy from this table, so it wraps rather than being cut off with an ellipsis
    table.add_column("found at", overflow="fold")
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

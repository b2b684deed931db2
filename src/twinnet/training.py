"""Trainer: fit a SiameseModel on labelled pairs, select the best epoch on validation, calibrate.

Batches are built around records, not pairs: a batch takes whole groups of pairs that share a
left record (in ER data a record sits in ~5 labelled pairs with its hardest candidates), and every
distinct record text in the batch is encoded once. All other records of the batch serve as extra
in-batch negatives, except those of the same entity (connected components of the training
positives), which are never pushed apart.

With ``sampler="m_per_class"`` the batches are entity groups instead: the records of the training
split (never another split's) are grouped into entities by the positive pairs, and each batch holds up
to ``m`` records of each of several entities, for the entity-group losses (``supcon``,
``multi_similarity``, ``batch_hard_triplet``, ``semi_hard_triplet``). An optional second stage then
fine-tunes on the pairs with another loss (``pair_stage_epochs``, ``pair_stage_loss``).

Graded pairs (``PairDataset.scores``, e.g. STS-B 0–5) train with ``cosent`` or ``cosine_regression``;
the epoch is then chosen on validation Spearman and no threshold is fitted.

Engineering: gradient accumulation, mixed precision on CUDA, checkpoints (safetensors + JSON) that
resume to exactly the result of an uninterrupted run, JSONL and (when installed) TensorBoard logs, and
data-parallel training under ``torchrun`` (each rank trains on its own share of the batches; only rank
0 writes logs and checkpoints).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
import collections
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twinnet.calibration import fit_calibrator
from twinnet.data.augment import RecordAugmenter
from twinnet.data.pairs import PairDataset, UnionFind
from twinnet.errors import TwinnetError
from twinnet.losses import TwinLoss, build_loss
from twinnet.metrics import best_f1
from twinnet.model import SiameseModel
from twinnet.scoring import length_batches

log = logging.getLogger("twinnet")

SAMPLERS = ("pairs", "m_per_class")
BATCH_ORDERS = ("shuffle", "graph")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


def check_choices(*, batch_order: str, sampler: str, mixed_precision: str) -> None:
    """Refuse a setting outside its fixed set of choices (the CLI calls this before reading any data)."""
    for name, value, allowed in (("batch_order", batch_order, BATCH_ORDERS), ("sampler", sampler, SAMPLERS),
                                 ("mixed_precision", mixed_precision, MIXED_PRECISION)):
        if value not in allowed:
            raise TwinnetError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def entity_labels(pairs: PairDataset) -> dict[str, int]:
    """Entity index per record id: connected components of the positive pairs (union-find)."""
    groups = UnionFind()
    for lid, rid, label in zip(pairs.left_ids, pairs.right_ids, pairs.labels):
        if label == 1:
            groups.union(lid, rid)
    roots: dict[str, int] = {}
    return {rid: roots.setdefault(groups.find(rid), len(roots)) for rid in sorted(pairs.record_ids())}


def grouped_batches(left_ids: PairDataset | list[str], batch_size: int, rng: np.random.Generator,
                    right_ids: Sequence[str] | None = None) -> Iterator[np.ndarray]:
    """Pair indices in batches of about ``batch_size`` pairs, keeping each left record's pairs together.

    ``left_ids``: the left record id of every pair (or a :class:`PairDataset`). The left records come in a seeded
    random order; with ``right_ids`` the order is *graph-local* instead: a breadth-first walk of the pair graph
    from random starting records, so left records that share right-side candidates land in the same batch and
    each shared record is encoded once for all of them (Abt-Buy, batches of 32: 23% fewer encodings per epoch)."""
    if isinstance(left_ids, PairDataset):
        left_ids = left_ids.left_ids
    groups: dict[str, list[int]] = {}
    for i, lid in enumerate(left_ids):
        groups.setdefault(lid, []).append(i)
    keys = list(groups)
    rng.shuffle(keys)
    if right_ids is not None:
        keys = _graph_order(keys, groups, right_ids)
    batch: list[int] = []
    for key in keys:
        group = groups[key]
        if batch and len(batch) + len(group) > batch_size:
            yield np.asarray(batch)
            batch = []
        batch.extend(group)
    if batch:
        yield np.asarray(batch)


def _graph_order(keys: list[str], groups: dict[str, list[int]], right_ids: Sequence[str]) -> list[str]:
    """``keys`` (left records, already shuffled) reordered by breadth-first walks over shared right records."""
    lefts_of_right: dict[str, list[str]] = {}
    for key in keys:
        for i in groups[key]:
            lefts_of_right.setdefault(right_ids[i], []).append(key)
    seen: set[str] = set()
    order: list[str] = []
    for start in keys:
        if start in seen:
            continue
        seen.add(start)
        queue = collections.deque([start])
        while queue:
            key = queue.popleft()
            order.append(key)
            for i in groups[key]:
                for neighbour in lefts_of_right[right_ids[i]]:
                    if neighbour not in seen:
                        seen.add(neighbour)
                        queue.append(neighbour)
    return order


def epoch_batches(pairs: PairDataset | tuple[list[str], np.ndarray], batch_size: int, positive_batch_size: int,
                  rng: np.random.Generator, right_ids: Sequence[str] | None = None) -> list[np.ndarray]:
    """One epoch's batches: the grouped batches (graph-local when ``right_ids`` are given), plus (when
    ``positive_batch_size`` > 0) batches of "same" pairs only, where every other record of the batch is an
    in-batch negative. Shuffled together.

    ``pairs``: a :class:`PairDataset`, or ``(left_ids, labels)`` of the epoch's pairs."""
    left_ids, labels = (pairs.left_ids, pairs.labels) if isinstance(pairs, PairDataset) else pairs
    batches = list(grouped_batches(left_ids, batch_size, rng, right_ids))
    if positive_batch_size > 0:
        positives = np.nonzero(labels == 1)[0]
        positives = positives[rng.permutation(len(positives))]
        batches += [positives[i: i + positive_batch_size] for i in range(0, len(positives), positive_batch_size)
                    if len(positives[i: i + positive_batch_size]) > 1]
        order = rng.permutation(len(batches))
        batches = [batches[i] for i in order]
    return batches


def mine_hard_negatives(embeddings: np.ndarray, left_rows: np.ndarray, right_rows: np.ndarray,
                        labels: np.ndarray, entity_of_row: np.ndarray, *, per_anchor: int = 2, k: int = 10,
                        margin: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Negatives for each left record that has a "same" pair: its nearest right-side records (``k`` per anchor,
    by the current model) that belong to another entity and are not already a labelled pair.

    Likely false negatives -- an unlabelled record that scores as high as the anchor's own match -- are dropped:
    a candidate is kept only when its score is at least ``margin`` below the anchor's weakest positive score.
    Returns ``(anchor_rows, negative_rows)``, the hardest first for each anchor.
    """
    from twinnet.dedup import block

    positive = labels == 1
    anchors = np.unique(left_rows[positive])
    candidates = np.unique(right_rows)
    if len(anchors) == 0 or len(candidates) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    weakest = {}
    for a, b in zip(left_rows[positive].tolist(), right_rows[positive].tolist()):
        score = float(embeddings[a] @ embeddings[b])
        weakest[a] = min(weakest.get(a, score), score)
    labelled = set(zip(left_rows.tolist(), right_rows.tolist()))
    found = block(embeddings[anchors], embeddings[candidates], k=min(k, len(candidates)))
    order = np.lexsort((-found.scores, found.left))
    mined_a, mined_n, taken = [], [], {}
    for i, j, score in zip(found.left[order].tolist(), found.right[order].tolist(), found.scores[order].tolist()):
        a, n = int(anchors[i]), int(candidates[j])
        if (taken.get(a, 0) >= per_anchor or a == n or entity_of_row[a] == entity_of_row[n]
                or (a, n) in labelled or score > weakest[a] - margin):
            continue
        taken[a] = taken.get(a, 0) + 1
        mined_a.append(a)
        mined_n.append(n)
    return np.asarray(mined_a, dtype=np.int64), np.asarray(mined_n, dtype=np.int64)


def m_per_class_batches(entity_of_row: np.ndarray, m: int, batch_size: int,
                        rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of record rows in batches of at most ``batch_size``, holding up to ``m`` rows of each entity.

    Every row appears exactly once per epoch. An entity with more than ``m`` records is split into chunks of
    ``m``; a record with no "same" pair is an entity of one and serves as a negative. Chunks are shuffled, then
    packed into batches in that order. (pytorch-metric-learning's ``MPerClassSampler`` samples with replacement
    and by class count; with records encoded once per batch, repeats would add nothing, and an epoch here should
    see every training record.)"""
    if m < 2:
        raise TwinnetError(f"m (records per entity in a batch) must be at least 2, got {m}")
    members: dict[int, list[int]] = {}
    for row in rng.permutation(len(entity_of_row)).tolist():
        members.setdefault(int(entity_of_row[row]), []).append(row)
    chunks = [(entity, rows[i: i + m]) for entity, rows in members.items() for i in range(0, len(rows), m)]
    chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    # Pack in order; a chunk whose entity is already in the batch waits for the next one, so that no batch
    # holds more than m records of an entity.
    batches: list[np.ndarray] = []
    waiting: list[tuple[int, list[int]]] = []
    position = 0
    while position < len(chunks) or waiting:
        batch: list[int] = []
        present: set[int] = set()

        def fits(chunk: tuple[int, list[int]]) -> bool:
            return chunk[0] not in present and len(batch) + len(chunk[1]) <= batch_size

        still_waiting = []
        for chunk in waiting:
            if fits(chunk):
                batch.extend(chunk[1])
                present.add(chunk[0])
            else:
                still_waiting.append(chunk)
        waiting = still_waiting
        while position < len(chunks):
            chunk = chunks[position]
            if chunk[0] in present:
                waiting.append(chunk)
            elif fits(chunk):
                batch.extend(chunk[1])
                present.add(chunk[0])
            else:
                break
            position += 1
        batches.append(np.sort(np.asarray(batch, dtype=np.int64)))
    return batches


@dataclass
class _Batch:
    """Distinct record rows to encode, and the labelled pairs among them (as rows)."""

    rows: np.ndarray
    left: np.ndarray
    right: np.ndarray
    values: np.ndarray  # per pair: 0/1 label, or graded target in [0, 1]
    pairs: int


# ---------------------------------------------------------------------------------------------- distributed
def is_main_process() -> bool:
    """True unless this is a non-zero rank of an initialised ``torch.distributed`` group."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _init_distributed(device_type: str) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group), from torchrun's environment."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, False
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


# ---------------------------------------------------------------------------------------------- checkpoints
def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    # clone: tied weights share storage, which safetensors refuses to write twice
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(path))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.exists():
        raise TwinnetError("checkpoint file missing; the checkpoint is incomplete", file=path)
    return load_file(str(path))


def _optimizer_state_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer's state as tensors (for safetensors) and everything else (for JSON): no pickle."""
    state = optimizer.state_dict()
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        plain["state"][str(index)] = {}
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value
            else:
                plain["state"][str(index)][name] = value
    return tensors, plain


def _optimizer_state_join(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in plain["state"].items()}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path:
    """The newest ``epoch-N`` checkpoint in ``folder`` (or ``folder`` itself if it is one)."""
    folder = Path(folder)
    if (folder / "trainer_state.json").exists():
        return folder
    found = sorted(folder.glob("epoch-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not found:
        raise TwinnetError("no checkpoint here (expected epoch-N/ folders with trainer_state.json)", file=folder)
    return found[-1].parent


def _data_fingerprint(train: PairDataset) -> str:
    digest = hashlib.sha256()
    for values in (train.left_ids, train.right_ids):
        digest.update("\x1f".join(values).encode())
    target = train.scores if train.is_graded else train.labels
    digest.update(np.asarray(target).tobytes())
    return digest.hexdigest()[:16]


class Trainer:
    """Fit a :class:`SiameseModel` on labelled pairs.

    Parameters
    ----------
    model: the model to train (changed in place).
    loss: a registered loss name (``contrastive``, ``online_contrastive``, ``multiple_negatives``,
        ``triplet``, ``batch_hard_triplet``, ``semi_hard_triplet``, ``supcon``, ``multi_similarity``; for graded
        pairs ``cosent``, ``cosine_regression``) or several joined by ``+``, or a :class:`~twinnet.losses.TwinLoss`.
    epochs, batch_size (pairs per step; records per step with ``m_per_class``), learning_rate, warmup_ratio,
        weight_decay, max_grad_norm: AdamW with linear warm-up and decay.
    seed: makes shuffling, dropout, augmentation and initialisation repeatable.
    calibration, probability: the threshold strategy and probability map fitted on validation.
    select_best: keep the epoch (0 = before training) with the best validation F1 (Spearman for graded pairs).
    positive_batch_size: when > 0, each epoch also trains on batches of this many "same" pairs only, so
        in-batch-negative losses see many positives against many (easier) negatives.
    hard_negatives: when > 0, before each epoch the current model embeds the training records and each left
        record with a "same" pair gets up to this many extra "different" pairs: its nearest right-side records
        of other entities (see :func:`mine_hard_negatives`; ``mining_k`` neighbours, ``mining_margin``).
    batch_order: ``shuffle`` (left records in a seeded random order) or ``graph`` (breadth-first over the pair
        graph, so that left records sharing candidates share a batch and fewer records are encoded; see
        :func:`grouped_batches`). Pair batches only.
    sampler: ``pairs`` (record-grouped pair batches) or ``m_per_class`` (entity batches, ``m`` records per
        entity; see :func:`m_per_class_batches`) for the first ``epochs``.
    pair_stage_epochs, pair_stage_loss: a second stage of this many epochs on pair batches with this loss
        (after entity-group training, for instance). 0 = no second stage.
    augment: a :class:`~twinnet.data.augment.RecordAugmenter`, a dict or ``"token_deletion=0.1,..."``; each
        batch's records are edited afresh, seeded by (seed, epoch, batch).
    accumulation_steps: add the gradients of this many batches before each optimizer step.
    encode_chunk_size: when > 0, a batch's records are encoded in length-sorted chunks of at most this many, a
        chunk also closing early where padding it would waste more than a quarter of its tokens (see
        :func:`~twinnet.scoring.length_batches`); each chunk is padded only to its own longest input: the same
        embeddings and loss as one pass, with less padding to compute (single process only; 0 = one pass, the
        default, whose results earlier runs recorded).
    mixed_precision: ``auto`` (bf16 on CUDA where supported, else fp16; off on CPU), ``no``, ``bf16``, ``fp16``
        (CUDA only).
    checkpoint_dir: write ``epoch-N/`` (weights, optimizer, scheduler, random states, history; safetensors + JSON)
        after each epoch; ``keep_checkpoints`` newest are kept (None = all).
    resume_from: a checkpoint folder (``epoch-N``) or a ``checkpoint_dir``: training continues after that epoch
        and ends exactly as the uninterrupted run would have.
    log_file: one JSON line per epoch; tensorboard_dir: also TensorBoard scalars, when tensorboard is installed.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel: every rank takes its
    own share of each epoch's batches, gradients are averaged, and only rank 0 writes logs and checkpoints
    (``rank_`` after ``fit``; save the model only where it is 0).
    """

    def __init__(self, model: SiameseModel, loss: str | TwinLoss = "online_contrastive+multiple_negatives", *,
                 epochs: int = 3, batch_size: int = 32, learning_rate: float = 5e-5, warmup_ratio: float = 0.1,
                 weight_decay: float = 0.01, max_grad_norm: float = 1.0, seed: int = 42,
                 calibration: str = "max_f1", probability: str = "auto", calibration_target: float | None = None,
                 cost_ratio: float = 1.0,
                 select_best: bool = True, positive_batch_size: int = 0, hard_negatives: int = 0,
                 mining_k: int = 10, mining_margin: float = 0.05,
                 sampler: str = "pairs", m: int = 4, pair_stage_epochs: int = 0, batch_order: str = "shuffle",
                 pair_stage_loss: str | TwinLoss = "online_contrastive+multiple_negatives",
                 augment: RecordAugmenter | dict[str, float] | str | None = None, accumulation_steps: int = 1,
                 encode_chunk_size: int = 0,
                 mixed_precision: str = "auto", checkpoint_dir: str | Path | None = None,
                 keep_checkpoints: int | None = 2, resume_from: str | Path | None = None,
                 loss_params: dict[str, Any] | None = None, device: str | None = None,
                 log_file: str | Path | None = None, tensorboard_dir: str | Path | None = None,
                 progress: bool = True, eval_batch_size: int = 128) -> None:
        self.model = model
        self.loss = loss
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.warmup_ratio = warmup_ratio
        self.weight_decay = weight_decay
        self.max_grad_norm = max_grad_norm
        self.seed = seed
        self.calibration = calibration
        self.probability = probability
        self.calibration_target = calibration_target
        self.cost_ratio = cost_ratio
        self.select_best = select_best
        self.positive_batch_size = positive_batch_size
        self.hard_negatives = hard_negatives
        self.mining_k = mining_k
        self.mining_margin = mining_margin
        self.sampler = sampler
        self.batch_order = batch_order
        self.m = m
        self.pair_stage_epochs = pair_stage_epochs
        self.pair_stage_loss = pair_stage_loss
        self.augment = augment
        self.accumulation_steps = accumulation_steps
        self.encode_chunk_size = encode_chunk_size
        self.mixed_precision = mixed_precision
        self.checkpoint_dir = checkpoint_dir
        self.keep_checkpoints = keep_checkpoints
        self.resume_from = resume_from
        self.loss_params = loss_params or {}
        self.device = device
        self.log_file = log_file
        self.tensorboard_dir = tensorboard_dir
        self.progress = progress
        self.eval_batch_size = eval_batch_size

    # ------------------------------------------------------------------ public
    def fit(self, train: PairDataset, valid: PairDataset | None = None) -> SiameseModel:
        self._validate(train, valid)
        set_seed(self.seed)
        self.model.encoder.reseed(self.seed)  # e.g. the image augmentation stream
        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        rank, world, created_group = _init_distributed(device.type)
        if world > 1 and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
            torch.cuda.set_device(device)
        self.rank_, self.world_size_ = rank, world
        main = rank == 0
        model = self.model.to(device)
        graded = train.is_graded
        # losses with a learnt layer over embeddings (binary_head) need its size; the others ignore it
        loss_params = {"embedding_dim": model.embedding_dim, **self.loss_params}
        stage_losses = {"first": build_loss(self.loss, **loss_params).to(device),
                        "pairs": build_loss(self.pair_stage_loss, **loss_params).to(device)
                        if self.pair_stage_epochs > 0 else None}
        augmenter = RecordAugmenter.from_spec(self.augment)
        augmenter = augmenter if augmenter is not None and augmenter.active else None
        if augmenter is not None and model.input_modality != "text":
            raise TwinnetError("augment edits text records; this model's inputs are "
                               f"{model.input_modality}")
        amp_dtype = self._amp_dtype(device)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        rng = np.random.default_rng(self.seed)

        # the encoder's inputs: serialised text for text models, image references for image models
        texts_left = model.to_inputs(train.left, what="left item")
        texts_right = model.to_inputs(train.right, what="right item")
        try:
            unique_texts = sorted(set(texts_left) | set(texts_right))
        except TypeError:
            raise TwinnetError("training records must be texts, attribute records or image references (paths); "
                               "in-memory images (arrays, bytes) can be embedded and verified but not trained on",
                               file=train.name or None) from None
        row_of = {t: i for i, t in enumerate(unique_texts)}
        prepared = model.encoder.prepare(unique_texts)
        truncated = sum(1 for p in prepared if getattr(p, "truncated_tokens", 0) > 0)
        record_of_row: list[Any] = [None] * len(unique_texts)
        entity_of_row = np.empty(len(unique_texts), dtype=np.int64)
        entity_of_id = entity_labels(train) if not graded else {}
        for ids, texts, records in ((train.left_ids, texts_left, train.left), (train.right_ids, texts_right, train.right)):
            for rid, text, record in zip(ids, texts, records):
                row = row_of[text]
                entity_of_row[row] = entity_of_id[rid] if not graded else row
                if record_of_row[row] is None:
                    record_of_row[row] = record
        left_rows = np.asarray([row_of[t] for t in texts_left])
        right_rows = np.asarray([row_of[t] for t in texts_right])
        # graded targets are scaled to [0, 1] by the training scores' range (STS-B 0-5 -> score / 5)
        pair_values = train.labels if not graded else self._scaled_targets(train.scores, train.scores)

        stages = ["first"] * self.epochs + ["pairs"] * self.pair_stage_epochs
        total_epochs = len(stages)
        first_is_entities = self.sampler == "m_per_class"
        graph_order = self.batch_order == "graph"

        def planned_batches(stage: str) -> int:
            if stage == "first" and first_is_entities:
                count = len(m_per_class_batches(entity_of_row, self.m, self.batch_size, np.random.default_rng(0)))
            else:
                count = len(epoch_batches((train.left_ids, pair_values), self.batch_size, self.positive_batch_size,
                                          np.random.default_rng(0), right_rows if graph_order else None))
                if self.hard_negatives > 0:  # at most this many mined pairs join each epoch
                    anchors = len(np.unique(left_rows[train.labels == 1]))
                    count += -(-anchors * self.hard_negatives // self.batch_size)
            return -(-(count // world) // self.accumulation_steps) if world > 1 else \
                -(-count // self.accumulation_steps)

        steps_of_stage = {stage: planned_batches(stage) for stage in set(stages)}
        total_steps = max(1, sum(steps_of_stage[s] for s in stages))
        left_id_of_row = {int(r): lid for r, lid in zip(left_rows.tolist(), train.left_ids)}
        # a loss may have its own parameters (binary_head's classifier over |u - v|): they train alongside
        loss_modules = torch.nn.ModuleList([fn for fn in stage_losses.values() if fn is not None])
        parameters = list(model.parameters()) + list(loss_modules.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=self.learning_rate, weight_decay=self.weight_decay)
        warmup = int(self.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / max(1, warmup), max(0.0, (total_steps - step) / max(1, total_steps - warmup))))
        train_module: torch.nn.Module = model
        if world > 1:
            # find_unused_parameters: encoders carry parts the embedding does not use (BERT's pooler)
            train_module = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
        self._open_tensorboard(main)

        self.history_: list[dict[str, Any]] = []
        best_state, best_value, best_epoch = None, -math.inf, 0
        skipped, steps_done, start_epoch = 0, 0, 1
        fingerprint = _data_fingerprint(train)
        if self.resume_from is not None:
            resumed = self._load_checkpoint(latest_checkpoint(self.resume_from), model, loss_modules, optimizer,
                                            scheduler, scaler, rng, fingerprint, device)
            best_value, best_epoch, skipped, steps_done = (resumed["best_value"], resumed["best_epoch"],
                                                           resumed["skipped"], resumed["steps_done"])
            best_state = resumed["best_state"]
            self.history_ = resumed["history"]
            start_epoch = resumed["epoch"] + 1
        elif valid is not None and self.select_best:
            best_value = self._valid_score(model, valid)
            best_state = copy.deepcopy(model.state_dict())
            self._log({"epoch": 0, self._metric_name(valid): best_value}, main)
        started = time.perf_counter()
        with _progress(self.progress and main and total_epochs > 0) as bar:  # epochs=0: calibrate only
            task = bar.add_task("training", total=total_steps, loss=float("nan"), speed=0.0)
            bar.update(task, completed=steps_done)
            for epoch in range(start_epoch, total_epochs + 1):
                stage = stages[epoch - 1]
                loss_fn = stage_losses[stage]
                entity_stage = stage == "first" and first_is_entities
                epoch_left, epoch_right, epoch_values, epoch_ids = left_rows, right_rows, pair_values, train.left_ids
                mined = 0
                if self.hard_negatives > 0 and not entity_stage:
                    anchor, negative = mine_hard_negatives(
                        model._embed_inputs(unique_texts, batch_size=self.eval_batch_size), left_rows, right_rows,
                        train.labels, entity_of_row, per_anchor=self.hard_negatives, k=self.mining_k,
                        margin=self.mining_margin)
                    mined = len(anchor)
                    epoch_left, epoch_right = np.r_[left_rows, anchor], np.r_[right_rows, negative]
                    epoch_values = np.r_[train.labels, np.zeros(mined, dtype=np.int64)]
                    epoch_ids = list(train.left_ids) + [left_id_of_row[int(r)] for r in anchor]
                model.train()
                epoch_start, losses, pairs_seen, encoded = time.perf_counter(), [], 0, 0
                if entity_stage:
                    no_pairs = np.zeros(0, dtype=np.int64)
                    batches = [_Batch(rows, no_pairs, no_pairs, no_pairs, 0) for rows in
                               m_per_class_batches(entity_of_row, self.m, self.batch_size, rng)]
                else:
                    batches = []
                    for index in epoch_batches((epoch_ids, epoch_values), self.batch_size, self.positive_batch_size, rng,
                                               epoch_right if graph_order else None):
                        rows = np.unique(np.r_[epoch_left[index], epoch_right[index]])
                        batches.append(_Batch(rows, epoch_left[index], epoch_right[index], epoch_values[index],
                                              len(index)))
                numbers = np.arange(len(batches))
                if world > 1:  # each rank its own share; equal counts, or the gradient all-reduce would wait forever
                    share = len(batches) // world
                    numbers = numbers[rank::world][:share]
                opt_steps = -(-len(numbers) // self.accumulation_steps)
                # the bar's total follows the real number of batches (mining changes it from epoch to epoch)
                bar.update(task, total=steps_done + opt_steps + sum(steps_of_stage[s] for s in stages[epoch:]))
                optimizer.zero_grad(set_to_none=True)
                pending, epoch_steps = 0, 0
                for position, number in enumerate(numbers.tolist()):
                    batch = batches[number]
                    loss = self._batch_loss(train_module, loss_fn, batch, prepared, record_of_row, entity_of_row,
                                            model, augmenter, graded, device, amp_dtype, (epoch, number))
                    finite = torch.isfinite(loss.detach())
                    if world > 1:  # every rank must skip together, or the gradient all-reduce would wait forever
                        flag = finite.float().reshape(1)
                        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
                        finite = flag.bool()[0]
                    if not finite:
                        skipped += 1
                        log.warning("non-finite loss at epoch %d; step skipped (%d so far)", epoch, skipped)
                        if skipped > 10:
                            raise TwinnetError("the loss was NaN/inf more than 10 times; lower the learning rate")
                        continue
                    pending += 1
                    step_now = pending == self.accumulation_steps or position == len(numbers) - 1
                    sync = contextlib.nullcontext() if step_now or world == 1 else train_module.no_sync()
                    with sync:
                        scaled = loss / self.accumulation_steps if self.accumulation_steps > 1 else loss
                        (scaler.scale(scaled) if scaler else scaled).backward()
                    losses.append(float(loss.detach()))
                    pairs_seen += batch.pairs
                    encoded += len(batch.rows)
                    if step_now:
                        self._optimizer_step(parameters, optimizer, scheduler, scaler)
                        pending = 0
                        steps_done += 1
                        epoch_steps += 1
                        speed = (pairs_seen or encoded) / max(time.perf_counter() - epoch_start, 1e-9)
                        # the bar shows the last 20 batches' mean, the history the whole epoch's
                        bar.update(task, advance=1, loss=float(np.mean(losses[-20:])), speed=speed,
                                   description=f"epoch {epoch}/{total_epochs}")
                if pending:  # the epoch's last micro-batches (the final one was skipped as non-finite)
                    self._optimizer_step(parameters, optimizer, scheduler, scaler)
                    steps_done += 1
                    epoch_steps += 1
                seconds = time.perf_counter() - epoch_start
                valid_value = self._valid_score(model, valid) if valid is not None else None
                record = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                          "mined_negatives": mined,
                          self._metric_name(valid): valid_value, "pairs_per_s": pairs_seen / max(seconds, 1e-9),
                          "records_encoded": encoded, "records_per_s": encoded / max(seconds, 1e-9),
                          "pairs": pairs_seen, "optimizer_steps": epoch_steps, "seconds": seconds}
                if total_epochs > self.epochs or first_is_entities:
                    record["stage"] = "entities" if entity_stage else "pairs"
                self._log(record, main)
                self._check_collapse(model, valid or train)
                if valid is not None and self.select_best and valid_value is not None and valid_value > best_value:
                    best_value, best_state, best_epoch = valid_value, copy.deepcopy(model.state_dict()), epoch
                if self.checkpoint_dir is not None and main:
                    self._save_checkpoint(Path(self.checkpoint_dir), epoch, model, loss_modules, optimizer, scheduler,
                                          scaler, rng,
                                          {"best_value": best_value, "best_epoch": best_epoch, "skipped": skipped,
                                           "steps_done": steps_done, "history": self.history_,
                                           "data_fingerprint": fingerprint}, best_state)
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        if valid is not None and not valid.is_graded:
            model.calibration_ = fit_calibrator(model.score_pairs(valid, batch_size=self.eval_batch_size), valid.labels,
                                                strategy=self.calibration, probability=self.probability,
                                                target=self.calibration_target, cost_ratio=self.cost_ratio)
        model.card_ = {
            "train": {"name": train.name, **train.summary(), "truncated_texts": truncated,
                      "distinct_texts": len(unique_texts)},
            "valid": {"name": valid.name, **valid.summary()} if valid is not None else None,
            "settings": self.settings(),
            "selected_epoch": best_epoch if valid is not None and self.select_best else total_epochs,
            "history": self.history_, "train_seconds": time.perf_counter() - started,
            "skipped_steps": skipped, "device": str(device),
            "train_record_ids": sorted(train.record_ids()),
        }
        if self._tensorboard is not None:
            self._tensorboard.close()
        if created_group:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        return model

    def settings(self) -> dict[str, Any]:
        loss = self.loss if isinstance(self.loss, str) else type(self.loss).__name__
        out = {"loss": loss, "loss_params": self.loss_params, "epochs": self.epochs, "batch_size": self.batch_size,
               "learning_rate": self.learning_rate, "warmup_ratio": self.warmup_ratio,
               "weight_decay": self.weight_decay, "seed": self.seed, "calibration": self.calibration,
               "probability": self.probability, "positive_batch_size": self.positive_batch_size,
               "hard_negatives": self.hard_negatives, "mining_k": self.mining_k, "mining_margin": self.mining_margin,
               "max_length": getattr(self.model.encoder, "max_length", None),
               "sampler": self.sampler, "accumulation_steps": self.accumulation_steps,
               "batch_order": self.batch_order, "encode_chunk_size": self.encode_chunk_size}
        if self.sampler == "m_per_class":
            out["m"] = self.m
        if self.pair_stage_epochs:
            out["pair_stage_epochs"] = self.pair_stage_epochs
            out["pair_stage_loss"] = (self.pair_stage_loss if isinstance(self.pair_stage_loss, str)
                                      else type(self.pair_stage_loss).__name__)
        augmenter = RecordAugmenter.from_spec(self.augment)
        if augmenter is not None and augmenter.active:
            out["augment"] = augmenter.to_dict()
        return out

    # ------------------------------------------------------------------ one batch
    def _batch_loss(self, train_module, loss_fn, batch: _Batch, prepared, record_of_row, entity_of_row,
                    model: SiameseModel, augmenter: RecordAugmenter | None, graded: bool, device, amp_dtype,
                    where: tuple[int, int]) -> torch.Tensor:
        rows = batch.rows
        local = {r: i for i, r in enumerate(rows.tolist())}
        labels_np = entity_of_row[rows]
        texts = None
        if augmenter is not None:
            texts = self._augmented_texts(augmenter, batch, record_of_row, entity_of_row, model, where)
            items = model.encoder.prepare(texts)
            # rows whose edited texts came out identical are one input: same label, never each other's negative
            first_of_text: dict[str, int] = {}
            labels_np = labels_np.copy()
            for i, text in enumerate(texts):
                labels_np[i] = labels_np[first_of_text.setdefault(text, i)]
        else:
            items = [prepared[r] for r in rows]
        autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                    else contextlib.nullcontext())
        chunk = self.encode_chunk_size
        # DistributedDataParallel expects one forward per backward, so chunks are for a single process only
        groups = (length_batches([model.encoder.item_cost(item) for item in items], chunk)
                  if chunk and len(items) > 1 and train_module is model else [])
        if len(groups) > 1:
            parts = []
            for group in groups:
                part = [items[i] for i in group]
                with autocast:
                    parts.append(train_module({k: v.to(device) for k, v in model.encoder.collate(part).items()}))
            order = np.concatenate(groups)
            embeddings = torch.cat(parts)[torch.as_tensor(np.argsort(order), device=device)]
        else:
            features = {k: v.to(device) for k, v in model.encoder.collate(items).items()}
            with autocast:
                embeddings = train_module(features)
        embeddings = embeddings.float()  # losses in full precision: exp/log of similarities overflow in half
        a = torch.as_tensor([local[r] for r in batch.left.tolist()], dtype=torch.long, device=device)
        b = torch.as_tensor([local[r] for r in batch.right.tolist()], dtype=torch.long, device=device)
        if graded:
            empty = a.new_zeros(0)
            targets = torch.as_tensor(batch.values, dtype=torch.float32, device=device)
            return loss_fn(embeddings, None, (a, b, empty, empty), targets)
        labels = torch.as_tensor(labels_np, device=device)
        if batch.pairs == 0:  # entity batch: every pair follows from the labels
            return loss_fn(embeddings, labels, None)
        y = torch.as_tensor(batch.values, device=device)
        distinct = a != b
        if texts is not None:
            distinct = distinct & torch.as_tensor([texts[i] != texts[j] for i, j in zip(a.tolist(), b.tolist())],
                                                  dtype=torch.bool, device=device)
        pos, neg = (y == 1), (y == 0) & distinct
        return loss_fn(embeddings, labels, (a[pos], b[pos], a[neg], b[neg]))

    def _augmented_texts(self, augmenter: RecordAugmenter, batch: _Batch, record_of_row, entity_of_row,
                         model: SiameseModel, where: tuple[int, int]) -> list[str]:
        # seeded by (seed, epoch, batch) so that a resumed run edits exactly as the uninterrupted one
        rng = np.random.default_rng([self.seed, *where])
        views = {r: record_of_row[r] for r in batch.rows.tolist()}
        if augmenter.value_swap > 0:
            if batch.pairs:
                same = [(l, r) for l, r, v in zip(batch.left.tolist(), batch.right.tolist(), batch.values.tolist())
                        if v == 1 and l != r]
            else:
                by_entity: dict[int, list[int]] = {}
                for r in batch.rows.tolist():
                    by_entity.setdefault(int(entity_of_row[r]), []).append(r)
                same = [(rows[i], rows[i + 1]) for rows in by_entity.values() for i in range(len(rows) - 1)]
            for first, second in same:
                views[first], views[second] = augmenter.swap_values(views[first], views[second], rng)
        return [augmenter.text(views[r], model.serializer, rng) for r in batch.rows.tolist()]

    def _optimizer_step(self, parameters, optimizer, scheduler, scaler) -> None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def _amp_dtype(self, device: torch.device) -> torch.dtype | None:  # after _validate: a known choice
        if self.mixed_precision == "no" or (self.mixed_precision == "auto" and device.type != "cuda"):
            return None
        if self.mixed_precision == "fp16" and device.type != "cuda":
            raise TwinnetError("mixed_precision='fp16' needs a CUDA GPU (bf16 also runs on CPU)")
        if self.mixed_precision == "bf16" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return torch.float16

    @staticmethod
    def _scaled_targets(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
        low, high = float(np.min(reference)), float(np.max(reference))
        return (scores - low) / (high - low) if high > low else np.zeros_like(scores)

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, folder: Path, epoch: int, model, loss_modules, optimizer, scheduler, scaler, rng,
                         state: dict[str, Any], best_state: dict[str, torch.Tensor] | None) -> None:
        from twinnet.io import atomic_folder

        with atomic_folder(folder / f"epoch-{epoch}") as staging:
            _save_tensors(model.state_dict(), staging / "model.safetensors")
            _save_tensors(loss_modules.state_dict(), staging / "loss.safetensors")
            if best_state is not None:
                _save_tensors(best_state, staging / "best_model.safetensors")
            opt_tensors, opt_plain = _optimizer_state_split(optimizer)
            _save_tensors(opt_tensors, staging / "optimizer.safetensors")
            random_states = {"torch_cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                random_states.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
            _save_tensors(random_states, staging / "random_states.safetensors")
            payload = {"epoch": epoch, **state, "settings": self.settings(), "optimizer": opt_plain,
                       "scheduler": scheduler.state_dict(), "numpy_generator": rng.bit_generator.state,
                       "grad_scaler": scaler.state_dict() if scaler is not None else None,
                       "has_best_state": best_state is not None}
            (staging / "trainer_state.json").write_text(json.dumps(payload, indent=1, default=float) + "\n")
        if self.keep_checkpoints is not None:
            done = sorted(folder.glob("epoch-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
            for old in done[: max(0, len(done) - self.keep_checkpoints)]:
                shutil.rmtree(old.parent, ignore_errors=True)

    def _load_checkpoint(self, folder: Path, model, loss_modules, optimizer, scheduler, scaler, rng,
                         fingerprint: str, device) -> dict[str, Any]:
        state_file = folder / "trainer_state.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError) as exc:
            raise TwinnetError(f"cannot read checkpoint state: {exc}", file=state_file) from None
        saved, now = state.get("settings", {}), self.settings()
        # checkpoints written before batch_order was recorded were all shuffled
        saved = {"batch_order": "shuffle", **saved}
        for key in ("loss", "batch_size", "seed", "learning_rate", "sampler", "accumulation_steps", "max_length",
                    "batch_order"):
            if saved.get(key) != now.get(key):
                raise TwinnetError(f"checkpoint was trained with {key}={saved.get(key)!r}, this run has "
                                   f"{now.get(key)!r}; resume with the same settings", file=state_file, field=key)
        if state.get("data_fingerprint") != fingerprint:
            raise TwinnetError("checkpoint was trained on other training pairs; resume with the same data",
                               file=state_file, field="data_fingerprint")
        model.load_state_dict(_load_tensors(folder / "model.safetensors"))
        loss_modules.load_state_dict(_load_tensors(folder / "loss.safetensors"))
        optimizer.load_state_dict(_optimizer_state_join(_load_tensors(folder / "optimizer.safetensors"),
                                                        state["optimizer"]))
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        rng.bit_generator.state = state["numpy_generator"]
        random_states = _load_tensors(folder / "random_states.safetensors")
        torch.set_rng_state(random_states["torch_cpu"])
        if torch.cuda.is_available():
            cuda = [random_states[k] for k in sorted(random_states) if k.startswith("torch_cuda_")]
            if cuda:
                torch.cuda.set_rng_state_all(cuda)
        best_state = None
        if state.get("has_best_state"):
            best_state = {k: v.to(device) for k, v in _load_tensors(folder / "best_model.safetensors").items()}
        best_value = state["best_value"]
        return {"epoch": int(state["epoch"]), "best_value": -math.inf if best_value is None else float(best_value),
                "best_epoch": int(state["best_epoch"]), "skipped": int(state["skipped"]),
                "steps_done": int(state["steps_done"]), "history": state["history"], "best_state": best_state}

    # ------------------------------------------------------------------ helpers
    def _validate(self, train: PairDataset, valid: PairDataset | None) -> None:
        if not (train.has_labels or train.is_graded) or len(train) == 0:
            raise TwinnetError("training needs labelled pairs (a 'label' column of 0/1, or graded 'score's)",
                               file=train.name or None)
        if self.epochs < 0 or self.batch_size < 2:
            raise TwinnetError("epochs must be >= 0 and batch_size >= 2")
        check_choices(batch_order=self.batch_order, sampler=self.sampler, mixed_precision=self.mixed_precision)
        if self.sampler == "m_per_class" and (self.m < 2 or self.m > self.batch_size):
            raise TwinnetError(f"m (records per entity in a batch) must be between 2 and batch_size, got {self.m}")
        if self.accumulation_steps < 1 or self.pair_stage_epochs < 0 or self.encode_chunk_size < 0:
            raise TwinnetError("accumulation_steps must be >= 1, pair_stage_epochs and encode_chunk_size >= 0")
        RecordAugmenter.from_spec(self.augment)
        from twinnet.calibration import Calibrator

        Calibrator(self.calibration, target=self.calibration_target, cost_ratio=self.cost_ratio,
                   probability=self.probability).check_params()
        first = build_loss(self.loss, **self.loss_params)
        second = build_loss(self.pair_stage_loss, **self.loss_params) if self.pair_stage_epochs else None
        if train.is_graded:
            if not first.needs_targets or (second is not None and not second.needs_targets):
                raise TwinnetError("graded pairs (scores) train with the cosent or cosine_regression loss",
                                   file=train.name or None)
            if self.sampler != "pairs" or self.positive_batch_size or self.hard_negatives:
                raise TwinnetError("graded pairs have no entities: sampler='m_per_class', positive_batch_size and "
                                   "hard_negatives need same/different labels", file=train.name or None)
        elif first.needs_targets or (second is not None and second.needs_targets):
            raise TwinnetError("cosent and cosine_regression are for graded pairs (a 'score' column); these pairs "
                               "have same/different labels", file=train.name or None)
        if valid is not None:
            if valid.is_graded != train.is_graded:
                raise TwinnetError("validation pairs must be of the same kind as the training pairs (graded scores "
                                   "or 0/1 labels)", file=valid.name or None)
            if valid.is_graded:
                if len(valid) < 3 or np.ptp(valid.scores) == 0:
                    raise TwinnetError("graded validation needs at least 3 pairs with different scores",
                                       file=valid.name or None)
                return
            if not valid.has_labels:
                raise TwinnetError("validation pairs need labels", file=valid.name or None)
            positives = int(valid.labels.sum())
            if positives in (0, len(valid)):
                only = "same (1)" if positives else "different (0)"
                raise TwinnetError(f"validation split has only {only} pairs; no threshold can be fitted. "
                                   "Use a validation split with both classes", file=valid.name or None)

    @staticmethod
    def _metric_name(valid: PairDataset | None) -> str:
        return "valid_spearman" if valid is not None and valid.is_graded else "valid_best_f1"

    def _valid_score(self, model: SiameseModel, valid: PairDataset) -> float:
        scores = model.score_pairs(valid, batch_size=self.eval_batch_size)
        if valid.is_graded:
            from scipy.stats import spearmanr

            return float(spearmanr(scores, valid.scores).statistic)
        return best_f1(valid.labels, scores)[0]

    def _check_collapse(self, model: SiameseModel, pairs: PairDataset) -> None:
        sample = pairs.subset(np.arange(min(len(pairs), 200)))
        emb = model.embed(list(sample.left) + list(sample.right), batch_size=self.eval_batch_size)
        spread = float(np.mean(np.std(emb, axis=0)))
        if not np.isfinite(emb).all():
            raise TwinnetError("embeddings became NaN/inf during training; lower the learning rate")
        if spread < 1e-3:
            log.warning("embeddings are collapsing (mean per-dimension std %.2e): every input maps to nearly "
                        "the same vector; lower the learning rate or change the loss", spread)

    def _open_tensorboard(self, main: bool) -> None:
        self._tensorboard = None
        if self.tensorboard_dir is None or not main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed (pip install tensorboard); epoch logs go to the JSONL "
                        "log only")
            return
        self._tensorboard = SummaryWriter(str(self.tensorboard_dir))

    def _log(self, record: dict[str, Any], main: bool = True) -> None:
        self.history_.append(record)
        if not main:
            return
        log.info("%s", record)
        if self.log_file:
            path = Path(self.log_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")
        if getattr(self, "_tensorboard", None) is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tensorboard.add_scalar(key, value, record["epoch"])
            self._tensorboard.flush()


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass


def _progress(enabled: bool):
    if not enabled:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("recent loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[speed]:.1f} items/s"),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=False)

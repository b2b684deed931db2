"""Trainer: fit a SiameseModel on labelled pairs, select the best epoch on validation, calibrate.

Batches are built around records, not pairs: a batch takes whole groups of pairs that share a
left record (in ER data a record sits in ~5 labelled pairs with its hardest candidates), and every
distinct record text in the batch is encoded once. All other records of the batch serve as extra
in-batch negatives, except those of the same entity (connected components of the training
positives), which are never pushed apart.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twinnet.calibration import fit_calibrator
from twinnet.data.pairs import PairDataset, UnionFind
from twinnet.errors import TwinnetError
from twinnet.losses import TwinLoss, build_loss
from twinnet.metrics import best_f1
from twinnet.model import SiameseModel

log = logging.getLogger("twinnet")


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


def grouped_batches(left_ids: PairDataset | list[str], batch_size: int,
                    rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Pair indices in batches of about ``batch_size`` pairs, keeping each left record's pairs together.

    ``left_ids``: the left record id of every pair (or a :class:`PairDataset`)."""
    if isinstance(left_ids, PairDataset):
        left_ids = left_ids.left_ids
    groups: dict[str, list[int]] = {}
    for i, lid in enumerate(left_ids):
        groups.setdefault(lid, []).append(i)
    order = list(groups.values())
    rng.shuffle(order)
    batch: list[int] = []
    for group in order:
        if batch and len(batch) + len(group) > batch_size:
            yield np.asarray(batch)
            batch = []
        batch.extend(group)
    if batch:
        yield np.asarray(batch)


def epoch_batches(pairs: PairDataset | tuple[list[str], np.ndarray], batch_size: int, positive_batch_size: int,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches: the grouped batches, plus (when ``positive_batch_size`` > 0) batches of "same"
    pairs only, where every other record of the batch is an in-batch negative. Shuffled together.

    ``pairs``: a :class:`PairDataset`, or ``(left_ids, labels)`` of the epoch's pairs."""
    left_ids, labels = (pairs.left_ids, pairs.labels) if isinstance(pairs, PairDataset) else pairs
    batches = list(grouped_batches(left_ids, batch_size, rng))
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


class Trainer:
    """Fit a :class:`SiameseModel` on labelled pairs.

    Parameters
    ----------
    model: the model to train (changed in place).
    loss: a registered loss name (``contrastive``, ``online_contrastive``, ``multiple_negatives``,
        ``triplet``) or several joined by ``+``, or a :class:`~twinnet.losses.TwinLoss`.
    epochs, batch_size (pairs per step), learning_rate, warmup_ratio, weight_decay, max_grad_norm:
        AdamW with linear warm-up and decay.
    seed: makes shuffling, dropout and initialisation repeatable.
    calibration, probability: the threshold strategy and probability map fitted on validation.
    select_best: keep the epoch (0 = before training) with the best validation F1.
    positive_batch_size: when > 0, each epoch also trains on batches of this many "same" pairs only, so
        in-batch-negative losses see many positives against many (easier) negatives.
    hard_negatives: when > 0, before each epoch the current model embeds the training records and each left
        record with a "same" pair gets up to this many extra "different" pairs: its nearest right-side records
        of other entities (see :func:`mine_hard_negatives`; ``mining_k`` neighbours, ``mining_margin``).
    """

    def __init__(self, model: SiameseModel, loss: str | TwinLoss = "online_contrastive+multiple_negatives", *,
                 epochs: int = 3, batch_size: int = 32, learning_rate: float = 5e-5, warmup_ratio: float = 0.1,
                 weight_decay: float = 0.01, max_grad_norm: float = 1.0, seed: int = 42,
                 calibration: str = "max_f1", probability: str = "auto", calibration_target: float | None = None,
                 cost_ratio: float = 1.0,
                 select_best: bool = True, positive_batch_size: int = 0, hard_negatives: int = 0,
                 mining_k: int = 10, mining_margin: float = 0.05,
                 loss_params: dict[str, Any] | None = None, device: str | None = None,
                 log_file: str | Path | None = None, progress: bool = True, eval_batch_size: int = 128) -> None:
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
        self.loss_params = loss_params or {}
        self.device = device
        self.log_file = log_file
        self.progress = progress
        self.eval_batch_size = eval_batch_size

    # ------------------------------------------------------------------ public
    def fit(self, train: PairDataset, valid: PairDataset | None = None) -> SiameseModel:
        self._validate(train, valid)
        set_seed(self.seed)
        self.model.encoder.reseed(self.seed)  # e.g. the image augmentation stream
        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = self.model.to(device)
        # losses with a learnt layer over embeddings (binary_head) need its size; the others ignore it
        loss_fn = build_loss(self.loss, **{"embedding_dim": model.embedding_dim, **self.loss_params}).to(device)
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
        entity_of_id = entity_labels(train)
        entity_of_row = np.empty(len(unique_texts), dtype=np.int64)
        for ids, texts in ((train.left_ids, texts_left), (train.right_ids, texts_right)):
            for rid, text in zip(ids, texts):
                entity_of_row[row_of[text]] = entity_of_id[rid]
        left_rows = np.asarray([row_of[t] for t in texts_left])
        right_rows = np.asarray([row_of[t] for t in texts_right])

        steps_per_epoch = len(epoch_batches(train, self.batch_size, self.positive_batch_size,
                                            np.random.default_rng(0)))
        if self.hard_negatives > 0:  # at most this many mined pairs join each epoch
            anchors = len(np.unique(left_rows[train.labels == 1]))
            steps_per_epoch += -(-anchors * self.hard_negatives // self.batch_size)
        total_steps = max(1, steps_per_epoch * self.epochs)
        left_id_of_row = {int(r): lid for r, lid in zip(left_rows.tolist(), train.left_ids)}
        # a loss may have its own parameters (binary_head's classifier over |u - v|): they train alongside
        parameters = list(model.parameters()) + list(loss_fn.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=self.learning_rate, weight_decay=self.weight_decay)
        warmup = int(self.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / max(1, warmup), max(0.0, (total_steps - step) / max(1, total_steps - warmup))))

        self.history_: list[dict[str, Any]] = []
        best_state, best_f1_value, best_epoch = None, -1.0, 0
        if valid is not None and self.select_best:
            best_f1_value = self._valid_f1(model, valid)
            best_state = copy.deepcopy(model.state_dict())
            self._log({"epoch": 0, "valid_best_f1": best_f1_value})
        skipped, steps_done = 0, 0
        started = time.perf_counter()
        with _progress(self.progress) as bar:
            task = bar.add_task("training", total=total_steps, loss=float("nan"), speed=0.0)
            for epoch in range(1, self.epochs + 1):
                epoch_left, epoch_right, epoch_labels, epoch_ids = left_rows, right_rows, train.labels, train.left_ids
                mined = 0
                if self.hard_negatives > 0:
                    anchor, negative = mine_hard_negatives(
                        model._embed_inputs(unique_texts, batch_size=self.eval_batch_size), left_rows, right_rows,
                        train.labels, entity_of_row, per_anchor=self.hard_negatives, k=self.mining_k,
                        margin=self.mining_margin)
                    mined = len(anchor)
                    epoch_left, epoch_right = np.r_[left_rows, anchor], np.r_[right_rows, negative]
                    epoch_labels = np.r_[train.labels, np.zeros(mined, dtype=np.int64)]
                    epoch_ids = list(train.left_ids) + [left_id_of_row[int(r)] for r in anchor]
                model.train()
                epoch_start, losses, pairs_seen, encoded = time.perf_counter(), [], 0, 0
                batches = epoch_batches((epoch_ids, epoch_labels), self.batch_size, self.positive_batch_size, rng)
                # the bar's total follows the real number of batches (mining changes it from epoch to epoch)
                bar.update(task, total=steps_done + len(batches) + (self.epochs - epoch) * steps_per_epoch)
                for index in batches:
                    rows = np.unique(np.r_[epoch_left[index], epoch_right[index]])
                    local = {r: i for i, r in enumerate(rows)}
                    features = {k: v.to(device) for k, v in model.encoder.collate([prepared[r] for r in rows]).items()}
                    embeddings = model(features)
                    labels = torch.as_tensor(entity_of_row[rows], device=device)
                    a = torch.as_tensor([local[r] for r in epoch_left[index]], device=device)
                    b = torch.as_tensor([local[r] for r in epoch_right[index]], device=device)
                    y = torch.as_tensor(epoch_labels[index], device=device)
                    distinct = a != b
                    pos, neg = (y == 1), (y == 0) & distinct
                    loss = loss_fn(embeddings, labels, (a[pos], b[pos], a[neg], b[neg]))
                    if not torch.isfinite(loss):
                        skipped += 1
                        optimizer.zero_grad(set_to_none=True)
                        log.warning("non-finite loss at epoch %d; step skipped (%d so far)", epoch, skipped)
                        if skipped > 10:
                            raise TwinnetError("the loss was NaN/inf more than 10 times; lower the learning rate")
                        continue
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    losses.append(float(loss.detach()))
                    pairs_seen += len(index)
                    encoded += len(rows)
                    speed = pairs_seen / max(time.perf_counter() - epoch_start, 1e-9)
                    steps_done += 1
                    bar.update(task, advance=1, loss=float(np.mean(losses[-20:])), speed=speed,
                               description=f"epoch {epoch}/{self.epochs}")
                seconds = time.perf_counter() - epoch_start
                valid_f1 = self._valid_f1(model, valid) if valid is not None else None
                record = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                          "mined_negatives": mined,
                          "valid_best_f1": valid_f1, "pairs_per_s": pairs_seen / max(seconds, 1e-9),
                          "records_encoded": encoded, "pairs": pairs_seen, "seconds": seconds}
                self._log(record)
                self._check_collapse(model, valid or train)
                if valid is not None and self.select_best and valid_f1 is not None and valid_f1 > best_f1_value:
                    best_f1_value, best_state, best_epoch = valid_f1, copy.deepcopy(model.state_dict()), epoch
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        if valid is not None:
            model.calibration_ = fit_calibrator(model.score_pairs(valid, batch_size=self.eval_batch_size), valid.labels,
                                                strategy=self.calibration, probability=self.probability,
                                                target=self.calibration_target, cost_ratio=self.cost_ratio)
        model.card_ = {
            "train": {"name": train.name, **train.summary(), "truncated_texts": truncated,
                      "distinct_texts": len(unique_texts)},
            "valid": {"name": valid.name, **valid.summary()} if valid is not None else None,
            "settings": self.settings(),
            "selected_epoch": best_epoch if valid is not None and self.select_best else self.epochs,
            "history": self.history_, "train_seconds": time.perf_counter() - started,
            "skipped_steps": skipped, "device": str(device),
            "train_record_ids": sorted(train.record_ids()),
        }
        return model

    def settings(self) -> dict[str, Any]:
        loss = self.loss if isinstance(self.loss, str) else type(self.loss).__name__
        return {"loss": loss, "loss_params": self.loss_params, "epochs": self.epochs, "batch_size": self.batch_size,
                "learning_rate": self.learning_rate, "warmup_ratio": self.warmup_ratio,
                "weight_decay": self.weight_decay, "seed": self.seed, "calibration": self.calibration,
                "probability": self.probability, "positive_batch_size": self.positive_batch_size,
                "hard_negatives": self.hard_negatives, "mining_k": self.mining_k, "mining_margin": self.mining_margin,
                "max_length": getattr(self.model.encoder, "max_length", None)}

    # ------------------------------------------------------------------ helpers
    def _validate(self, train: PairDataset, valid: PairDataset | None) -> None:
        if not train.has_labels or len(train) == 0:
            raise TwinnetError("training needs labelled pairs (a 'label' column of 0/1)", file=train.name or None)
        if self.epochs < 0 or self.batch_size < 2:
            raise TwinnetError("epochs must be >= 0 and batch_size >= 2")
        from twinnet.calibration import Calibrator

        Calibrator(self.calibration, target=self.calibration_target, cost_ratio=self.cost_ratio,
                   probability=self.probability).check_params()
        build_loss(self.loss, **self.loss_params)
        if valid is not None:
            if not valid.has_labels:
                raise TwinnetError("validation pairs need labels", file=valid.name or None)
            positives = int(valid.labels.sum())
            if positives in (0, len(valid)):
                only = "same (1)" if positives else "different (0)"
                raise TwinnetError(f"validation split has only {only} pairs; no threshold can be fitted. "
                                   "Use a validation split with both classes", file=valid.name or None)

    def _valid_f1(self, model: SiameseModel, valid: PairDataset) -> float:
        scores = model.score_pairs(valid, batch_size=self.eval_batch_size)
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

    def _log(self, record: dict[str, Any]) -> None:
        self.history_.append(record)
        log.info("%s", record)
        if self.log_file:
            path = Path(self.log_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")


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
                    TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[speed]:.1f} pairs/s"),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=False)

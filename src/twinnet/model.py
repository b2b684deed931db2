"""SiameseModel: one shared encoder, L2-normalised embeddings, a cosine score, a calibrated decision."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from twinnet import __version__
from twinnet.calibration import Calibrator
from twinnet.data.pairs import PairDataset
from twinnet.data.records import Record, RecordSerializer, is_missing
from twinnet.encoders import DEFAULT_TEXT_MODEL, ENCODERS, Encoder, TextEncoder
from twinnet.errors import TwinnetError

log = logging.getLogger("twinnet")
SIMILARITIES = ("cosine",)


@dataclass
class Truncation:
    """How many inputs of the last ``embed`` call were cut to the encoder's maximum length."""

    inputs: int = 0
    truncated: int = 0
    tokens_cut: int = 0
    max_tokens_cut: int = 0

    def message(self) -> str:
        return (f"{self.truncated} of {self.inputs} inputs were longer than the maximum length and were truncated "
                f"(up to {self.max_tokens_cut} tokens cut)")


@dataclass
class Decision:
    """The verdict on one pair."""

    same: bool
    score: float
    probability: float


class SiameseModel(nn.Module):
    """Two inputs, one encoder with shared weights, one similarity score.

    ``embed`` maps records to L2-normalised embeddings, ``score`` compares pairs by cosine similarity,
    and ``verify`` turns scores into decisions with the threshold fitted on validation data
    (``calibration_``, set by :class:`~twinnet.training.Trainer` or :meth:`calibrate`).
    """

    def __init__(self, encoder: Encoder, *, normalize: bool = True, similarity: str = "cosine",
                 serializer: RecordSerializer | None = None) -> None:
        super().__init__()
        if similarity not in SIMILARITIES:
            raise TwinnetError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        self.encoder = encoder
        self.normalize = normalize
        self.similarity = similarity
        self.serializer = serializer or RecordSerializer()
        self.calibration_: Calibrator | None = None
        self.card_: dict[str, Any] = {}
        self.last_truncation = Truncation()

    @classmethod
    def for_text(cls, model_name_or_path: str = DEFAULT_TEXT_MODEL, *, max_length: int = 64,
                 pooling: str = "mean", normalize: bool = True,
                 serializer: RecordSerializer | None = None) -> SiameseModel:
        """A text matcher over any Hugging Face / sentence-transformers model id or local folder."""
        return cls(TextEncoder(model_name_or_path, max_length=max_length, pooling=pooling),
                   normalize=normalize, serializer=serializer)

    # ------------------------------------------------------------------ forward
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        embeddings = self.encoder(features)
        if self.normalize:
            embeddings = nn.functional.normalize(embeddings, p=2, dim=-1)
        return embeddings

    def to_inputs(self, records: Sequence[Record], *, what: str = "item") -> list[Any]:
        """Serialise records to the encoder's inputs, rejecting missing ones by index."""
        inputs = []
        for i, record in enumerate(records):
            if not isinstance(record, (str, dict)) and is_missing(record):
                raise TwinnetError(f"{what} {i} is missing (None/NaN); every item needs a value")
            try:
                inputs.append(self.serializer(record) if self.encoder.modality == "text" else record)
            except ValueError as exc:
                raise TwinnetError(f"{what} {i}: {exc}") from None
        return inputs

    # ------------------------------------------------------------------ inference
    def embed(self, records: Sequence[Record], *, batch_size: int = 64, normalize: bool | None = None,
              progress: Any = None) -> np.ndarray:
        """Embeddings of ``records`` as a float32 array (one row each, in order).

        Identical inputs are encoded once, and inputs of similar length are batched together.
        ``normalize=False`` returns the pooled embeddings before L2 normalisation.
        """
        if isinstance(records, (str, dict)):
            raise TwinnetError("embed() takes a list of records; wrap a single one in a list")
        inputs = self.to_inputs(records)
        return self._embed_inputs(inputs, batch_size=batch_size, normalize=normalize, progress=progress)

    @torch.inference_mode()
    def _embed_inputs(self, inputs: list[Any], *, batch_size: int, normalize: bool | None = None,
                      progress: Any = None) -> np.ndarray:
        if not inputs:
            return np.zeros((0, self.encoder.embedding_dim), dtype=np.float32)
        unique, inverse = _unique(inputs)
        prepared = self.encoder.prepare(unique)
        self._record_truncation(prepared)
        order = np.argsort([self.encoder.item_cost(p) for p in prepared], kind="stable")
        out = np.empty((len(unique), self.encoder.embedding_dim), dtype=np.float32)
        was_training = self.training
        self.eval()
        device = self.device
        try:
            for start in range(0, len(order), batch_size):
                rows = order[start: start + batch_size]
                features = {k: v.to(device) for k, v in self.encoder.collate([prepared[i] for i in rows]).items()}
                emb = self.encoder(features)
                if self.normalize if normalize is None else normalize:
                    emb = nn.functional.normalize(emb, p=2, dim=-1)
                out[rows] = emb.float().cpu().numpy()
                if progress is not None:
                    progress(len(rows))
        finally:
            self.train(was_training)
        return out[inverse]

    def _record_truncation(self, prepared: Sequence[Any]) -> None:
        cuts = [getattr(p, "truncated_tokens", 0) for p in prepared]
        cut = [c for c in cuts if c > 0]
        self.last_truncation = Truncation(len(cuts), len(cut), int(sum(cut)), int(max(cut, default=0)))
        if cut:
            log.warning(self.last_truncation.message())

    def score(self, left: Sequence[Record], right: Sequence[Record], *, batch_size: int = 64) -> np.ndarray:
        """Cosine similarity of each (left[i], right[i]) pair; every distinct record is embedded once."""
        if len(left) != len(right):
            raise TwinnetError(f"left has {len(left)} records but right has {len(right)}")
        inputs = self.to_inputs(list(left), what="left item") + self.to_inputs(list(right), what="right item")
        emb = self._embed_inputs(inputs, batch_size=batch_size)
        a, b = emb[: len(left)], emb[len(left):]
        if not self.normalize:
            a = a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)
            b = b / np.clip(np.linalg.norm(b, axis=1, keepdims=True), 1e-12, None)
        return np.sum(a * b, axis=1).astype(np.float64)

    def score_pairs(self, pairs: PairDataset, *, batch_size: int = 64) -> np.ndarray:
        return self.score(pairs.left, pairs.right, batch_size=batch_size)

    def decision_threshold(self, threshold: float | None = None, *, fmr: float | None = None) -> float:
        """The threshold in force: an explicit one, one for a target false-match rate, or the stored one."""
        if threshold is not None:
            return float(threshold)
        if self.calibration_ is None:
            raise TwinnetError("this model has no fitted threshold; train it with a validation split, "
                               "call model.calibrate(valid), or pass a threshold")
        if fmr is not None:
            return self.calibration_.threshold_for(fmr=fmr)
        return self.calibration_.threshold_

    def verify(self, left: Record | Sequence[Record], right: Record | Sequence[Record], *,
               threshold: float | None = None, fmr: float | None = None) -> Decision | list[Decision]:
        """Decide whether records are the same: one pair gives a :class:`Decision`, lists give a list."""
        single = isinstance(left, (str, dict)) or isinstance(right, (str, dict))
        for name, value in (("left", left), ("right", right)):
            if not isinstance(value, (str, dict, list, tuple)) and is_missing(value):
                raise TwinnetError(f"{name} record is missing (None/NaN)")
        if single and not (isinstance(left, (str, dict)) and isinstance(right, (str, dict))):
            raise TwinnetError("verify() takes two records, or two equally long lists of records")
        lefts, rights = ([left], [right]) if single else (list(left), list(right))
        scores = self.score(lefts, rights)
        cut = self.decision_threshold(threshold, fmr=fmr)
        probabilities = self.predict_proba_scores(scores)
        decisions = [Decision(bool(s >= cut), float(s), float(p)) for s, p in zip(scores, probabilities)]
        return decisions[0] if single else decisions

    def predict_proba_scores(self, scores: np.ndarray) -> np.ndarray:
        if self.calibration_ is None:
            return np.full(len(scores), np.nan)
        return self.calibration_.predict_proba(scores)

    def predict(self, pairs: PairDataset, *, threshold: float | None = None) -> np.ndarray:
        """0/1 decisions for a pair dataset (scikit-learn style)."""
        return (self.score_pairs(pairs) >= self.decision_threshold(threshold)).astype(np.int64)

    def predict_proba(self, pairs: PairDataset) -> np.ndarray:
        return self.predict_proba_scores(self.score_pairs(pairs))

    def calibrate(self, valid: PairDataset, **options: Any) -> Calibrator:
        """Fit the threshold and probability map on labelled validation pairs and store them."""
        from twinnet.calibration import fit_calibrator

        if not valid.has_labels:
            raise TwinnetError("calibration needs labelled validation pairs", file=valid.name or None)
        self.calibration_ = fit_calibrator(self.score_pairs(valid), valid.labels, **options)
        return self.calibration_

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        return {"twinnet_version": __version__, "encoder": self.encoder.config(), "normalize": self.normalize,
                "similarity": self.similarity, "decision": "same if score >= threshold",
                "serialization": self.serializer.to_dict()}

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
        """Write the model folder atomically: a failed save leaves any previous folder intact."""
        from twinnet.modelcard import write_card_files

        target = Path(path)
        if target.exists() and not overwrite:
            raise TwinnetError("model folder already exists; pass --overwrite to replace it", file=target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            self.encoder.save(staging)
            _match_sentence_transformers_normalization(staging, self.normalize)
            config_file = staging / "config.json"
            config = json.loads(config_file.read_text()) if config_file.exists() else {}
            config["twinnet"] = self.config()
            config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
            if self.calibration_ is not None:
                (staging / "calibration.json").write_text(
                    json.dumps(self.calibration_.to_dict(), indent=2) + "\n")
            write_card_files(self, staging)
            if target.exists():
                backup = target.with_name(f".{target.name}.old")
                shutil.rmtree(backup, ignore_errors=True)
                os.replace(target, backup)
                os.replace(staging, target)
                shutil.rmtree(backup, ignore_errors=True)
            else:
                os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str | None = None) -> SiameseModel:
        """Load a model folder written by :meth:`save` (safetensors and JSON only; nothing unpickled)."""
        folder = Path(path)
        config_file = folder / "config.json"
        if not config_file.exists():
            raise TwinnetError("not a twinnet model folder (no config.json)", file=folder)
        try:
            config = json.loads(config_file.read_text())["twinnet"]
        except (KeyError, json.JSONDecodeError):
            raise TwinnetError("config.json has no 'twinnet' section: this is a plain encoder, not a trained "
                               "twinnet model; use SiameseModel.for_text(path) to start from it", file=folder) from None
        kind = config["encoder"]["type"]
        if kind not in ENCODERS:
            raise TwinnetError(f"unknown encoder type {kind!r}", file=config_file)
        encoder = ENCODERS[kind].load(folder, config["encoder"])
        model = cls(encoder, normalize=config["normalize"], similarity=config["similarity"],
                    serializer=RecordSerializer.from_dict(config.get("serialization", {})))
        if (folder / "calibration.json").exists():
            model.calibration_ = Calibrator.from_dict(json.loads((folder / "calibration.json").read_text()))
        if (folder / "training.json").exists():
            model.card_ = json.loads((folder / "training.json").read_text())
        model.eval()
        if device:
            model.to(device)
        return model


def _match_sentence_transformers_normalization(folder: Path, normalize: bool) -> None:
    """Drop the Normalize module from a sentence-transformers layout when the model does not normalise,
    so both libraries embed the folder identically."""
    modules_file = folder / "modules.json"
    if normalize or not modules_file.exists():
        return
    modules = [m for m in json.loads(modules_file.read_text()) if not m["type"].endswith(".Normalize")]
    modules_file.write_text(json.dumps(modules, indent=2))
    shutil.rmtree(folder / "2_Normalize", ignore_errors=True)


def _unique(items: Sequence[Any]) -> tuple[list[Any], np.ndarray]:
    """Distinct items (by value for text, by identity otherwise) and the map back to positions."""
    index: dict[Any, int] = {}
    unique: list[Any] = []
    inverse = np.empty(len(items), dtype=np.int64)
    for i, item in enumerate(items):
        key = item if isinstance(item, (str, bytes)) else id(item)
        if key not in index:
            index[key] = len(unique)
            unique.append(item)
        inverse[i] = index[key]
    return unique, inverse

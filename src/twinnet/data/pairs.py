"""The in-memory shape of labelled (or unlabelled) record pairs."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from twinnet.data.records import Record, RecordSerializer, clean_text


class UnionFind:
    """Disjoint sets over hashable items; used to build entities from "same" labels."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        parent = self.parent
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving keeps chains short
            x = parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


def text_id(text: str, prefix: str = "t") -> str:
    """A stable id for a record known only by its text (Ditto files, plain pair files)."""
    return f"{prefix}:{hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]}"


@dataclass
class PairDataset:
    """Pairs of records with optional 0/1 labels (1 = same entity), or graded similarity scores.

    ``labels`` are same/different and stay integer 0/1: everything that needs a binary answer
    (thresholds, F1, entity groups) reads them. ``scores`` hold graded similarity instead (STS-B: 0–5,
    higher = more similar) for the graded losses and Spearman evaluation; a dataset has one or the other.

    ``left_ids`` / ``right_ids`` identify records across pairs and splits: they are what leakage
    checks, seen/unseen evaluation and entity groups are built from.
    """

    left: list[Record]
    right: list[Record]
    labels: np.ndarray | None = None
    left_ids: list[str] = field(default_factory=list)
    right_ids: list[str] = field(default_factory=list)
    name: str = ""
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.left) != len(self.right):
            raise ValueError(f"left has {len(self.left)} records but right has {len(self.right)}")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if len(self.labels) != len(self.left):
                raise ValueError(f"{len(self.labels)} labels for {len(self.left)} pairs")
        if self.scores is not None:
            if self.labels is not None:
                raise ValueError("a pair dataset has same/different labels or graded scores, not both")
            self.scores = np.asarray(self.scores, dtype=np.float64)
            if len(self.scores) != len(self.left):
                raise ValueError(f"{len(self.scores)} scores for {len(self.left)} pairs")
            if not np.isfinite(self.scores).all():
                raise ValueError("scores contain NaN or inf")
        if not self.left_ids:
            self.left_ids = [record_id(r) for r in self.left]
        if not self.right_ids:
            self.right_ids = [record_id(r) for r in self.right]

    def __len__(self) -> int:
        return len(self.left)

    @property
    def has_labels(self) -> bool:
        """True for same/different (0/1) labels; graded data has ``scores`` instead."""
        return self.labels is not None

    @property
    def is_graded(self) -> bool:
        return self.scores is not None

    def subset(self, index: Sequence[int] | np.ndarray) -> PairDataset:
        index = np.asarray(index, dtype=np.int64)
        return PairDataset(
            left=[self.left[i] for i in index], right=[self.right[i] for i in index],
            labels=None if self.labels is None else self.labels[index],
            left_ids=[self.left_ids[i] for i in index], right_ids=[self.right_ids[i] for i in index],
            name=self.name, scores=None if self.scores is None else self.scores[index])

    def texts(self, serializer: RecordSerializer) -> tuple[list[str], list[str]]:
        return serializer.serialize_many(self.left), serializer.serialize_many(self.right)

    def record_ids(self) -> set[str]:
        return set(self.left_ids) | set(self.right_ids)

    def summary(self) -> dict[str, int]:
        positives = int(self.labels.sum()) if self.labels is not None else -1
        return {"pairs": len(self), "positives": positives, "records": len(self.record_ids())}

    def to_frame(self):  # pandas is imported lazily: it is only needed for I/O
        import pandas as pd

        frame = pd.DataFrame({"left_id": self.left_ids, "right_id": self.right_ids})
        if self.labels is not None:
            frame["label"] = self.labels
        if self.scores is not None:
            frame["score"] = self.scores
        return frame


def record_id(record: Record) -> str:
    """The record's ``id`` field, else a hash of its text (see :func:`text_id`)."""
    if isinstance(record, str):
        return text_id(clean_text(record))
    if "id" in record and record["id"] is not None:
        return str(record["id"])
    return text_id(RecordSerializer()(record))

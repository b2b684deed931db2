"""Audit labelled pair data for the faults that quietly ruin Siamese training and evaluation.

Checks: exact duplicate pairs, the same pair with conflicting labels, transitivity conflicts (A~B and B~C
labelled same but A~C labelled different), pairs leaked between splits, records and entities shared between
train and the other splits, class balance per split, empty records, and near-identical records labelled
different.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twinnet.data.pairs import PairDataset, UnionFind
from twinnet.data.records import RecordSerializer, clean_text

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


@dataclass
class AuditReport:
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicate_pairs: list[dict[str, Any]] = field(default_factory=list)
    label_conflicts: list[dict[str, Any]] = field(default_factory=list)
    transitivity_conflicts: list[dict[str, Any]] = field(default_factory=list)
    leaked_pairs: list[dict[str, Any]] = field(default_factory=list)
    empty_records: list[dict[str, Any]] = field(default_factory=list)
    near_identical_different: list[dict[str, Any]] = field(default_factory=list)
    shared_records: dict[str, dict[str, int]] = field(default_factory=dict)

    FINDINGS = ("duplicate_pairs", "label_conflicts", "transitivity_conflicts", "leaked_pairs", "empty_records",
                "near_identical_different")

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in self.FINDINGS}

    @property
    def has_leakage_or_conflicts(self) -> bool:
        c = self.counts()
        return bool(c["leaked_pairs"] or c["label_conflicts"] or c["transitivity_conflicts"])

    def to_dict(self) -> dict[str, Any]:
        out = {"counts": self.counts(), "splits": self.splits, "shared_records": self.shared_records}
        out.update({name: getattr(self, name) for name in self.FINDINGS})
        return out


def _key(text: str) -> str:
    return _NON_ALNUM.sub("", text.lower())


def audit(splits: Mapping[str, PairDataset], serializer: RecordSerializer | None = None,
          train_split: str = "train") -> AuditReport:
    """Audit one or more labelled splits (``{"train": ..., "valid": ..., "test": ...}``)."""
    serializer = serializer or RecordSerializer()
    report = AuditReport()
    seen_pair: dict[tuple[str, str], tuple[str, int, int]] = {}  # unordered pair -> (split, row, label)
    reported_conflicts: set[tuple[str, str]] = set()
    texts: dict[str, str] = {}
    for split, pairs in splits.items():
        labels = pairs.labels if pairs.labels is not None else [None] * len(pairs)
        positives = int(sum(1 for y in labels if y == 1))
        report.splits[split] = {"pairs": len(pairs), "same": positives, "different": len(pairs) - positives,
                                "same_share": round(positives / max(len(pairs), 1), 4),
                                "records": len(pairs.record_ids())}
        for row, (lid, rid, left, right, label) in enumerate(zip(pairs.left_ids, pairs.right_ids, pairs.left,
                                                                 pairs.right, labels)):
            for side, rec_id, record in (("left", lid, left), ("right", rid, right)):
                if rec_id not in texts:
                    texts[rec_id] = serializer(record)
                    if not clean_text(texts[rec_id]):
                        report.empty_records.append({"split": split, "row": row, "side": side, "id": rec_id})
            key = (lid, rid) if lid <= rid else (rid, lid)
            label = None if label is None else int(label)
            if key in seen_pair:
                first_split, first_row, first_label = seen_pair[key]
                where = {"pair": list(key), "first": {"split": first_split, "row": first_row, "label": first_label},
                         "again": {"split": split, "row": row, "label": label}}
                if first_label != label and key not in reported_conflicts:
                    reported_conflicts.add(key)
                    report.label_conflicts.append(where)
                elif first_split != split:
                    report.leaked_pairs.append(where)
                elif first_label == label:
                    report.duplicate_pairs.append(where)
            else:
                seen_pair[key] = (split, row, label)

    # transitivity: a pair labelled different whose records are joined by a chain of "same" labels
    groups = UnionFind()
    for key, (_, _, label) in seen_pair.items():
        if label == 1:
            groups.union(*key)
    find = groups.find
    for key, (split, row, label) in seen_pair.items():
        if label == 0 and key not in reported_conflicts and find(key[0]) == find(key[1]):
            report.transitivity_conflicts.append({"pair": list(key), "split": split, "row": row,
                                                  "note": "labelled different, but a chain of same-labels joins them"})
        if label == 0 and key[0] != key[1] and _key(texts[key[0]]) == _key(texts[key[1]]) and texts[key[0]]:
            report.near_identical_different.append({"pair": list(key), "split": split, "row": row,
                                                    "text": texts[key[0]][:120]})

    if train_split in splits:
        train_ids = splits[train_split].record_ids()
        entity_of = {x: find(x) for x in train_ids}
        train_entities = set(entity_of.values())
        for split, pairs in splits.items():
            if split == train_split:
                continue
            ids = pairs.record_ids()
            unseen_pairs = sum(1 for a, b in zip(pairs.left_ids, pairs.right_ids) if a not in train_ids and b not in train_ids)
            report.shared_records[split] = {
                "records": len(ids), "also_in_train": len(ids & train_ids),
                "pairs_with_no_train_record": unseen_pairs,
                "entities_seen_in_train": sum(1 for x in {find(i) for i in ids} if x in train_entities),
                "entities": len({find(i) for i in ids})}
    return report


def format_report(report: AuditReport) -> str:
    lines = ["splits:"]
    for split, info in report.splits.items():
        lines.append(f"  {split}: {info['pairs']} pairs, {info['same']} same ({100 * info['same_share']:.1f}%), "
                     f"{info['records']} records")
    for split, info in report.shared_records.items():
        lines.append(f"  {split} vs train: {info['also_in_train']} of {info['records']} records also in train; "
                     f"{info['pairs_with_no_train_record']} pairs have no train record; "
                     f"{info['entities_seen_in_train']} of {info['entities']} entities seen in train")
    lines.append("findings:")
    for name, count in report.counts().items():
        lines.append(f"  {name.replace('_', ' ')}: {count}")
        for item in getattr(report, name)[:3]:
            lines.append(f"    e.g. {item}")
    return "\n".join(lines)


"""Readers for pair data: the DeepMatcher and Ditto layouts, and plain pair files.

Every reader returns a :class:`~twinnet.data.pairs.PairDataset` and reports bad input as a
:class:`~twinnet.errors.TwinnetError` naming the file, row (the file's line number, header = 1) and
field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twinnet.data.pairs import PairDataset, text_id
from twinnet.data.records import clean_text, is_missing, parse_colval
from twinnet.errors import TwinnetError
from twinnet.io import first_row, not_utf8, read_table

SPLITS = ("train", "valid", "test")
_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no"}


def parse_label(value: Any, *, file: object, row: int, field: str = "label") -> int:
    """0 or 1 (1 = same entity); anything else is an error naming where it was found."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return int(value)
    if isinstance(value, (float, np.floating)) and value in (0.0, 1.0):
        return int(value)
    text = "" if is_missing(value) else str(value).strip().lower()
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    shown = "missing" if text == "" else repr(value)
    raise TwinnetError(f"label must be 0 or 1 (1 = same), got {shown}", file=file, row=row, field=field)


def parse_score(value: Any, *, file: object, row: int, field: str = "score") -> float:
    """A graded similarity score: any finite number (STS-B uses 0–5)."""
    try:
        score = float(str(value).strip()) if not isinstance(value, (int, float, np.number)) else float(value)
    except ValueError:
        score = float("nan")
    if is_missing(value) or not np.isfinite(score):
        shown = "missing" if is_missing(value) else repr(value)
        raise TwinnetError(f"score must be a finite number, got {shown}", file=file, row=row, field=field)
    return score


# --------------------------------------------------------------------------- STS Benchmark layout
def read_sts(path: str | os.PathLike[str]) -> PairDataset:
    """Read an STS Benchmark file (``sts-train.csv``: tab-separated ``genre, filename, year, id, score,
    sentence1, sentence2`` and sometimes two trailing source columns; no header, quotes are literal)
    into a graded :class:`PairDataset` (``scores`` 0–5)."""
    path = Path(path)
    lines = _utf8_lines(path)
    left, right, scores = [], [], []
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) < 7:
            raise TwinnetError(f"expected at least 7 tab-separated fields (genre, filename, year, id, score, "
                               f"sentence1, sentence2), found {len(cells)}", file=path, row=row)
        scores.append(parse_score(cells[4], file=path, row=row, field="score (column 5)"))
        for cell, field, out in ((cells[5], "sentence1 (column 6)", left), (cells[6], "sentence2 (column 7)", right)):
            text = clean_text(cell)
            if not text:
                raise TwinnetError("sentence is empty", file=path, row=row, field=field)
            out.append(text)
    if not left:
        raise TwinnetError("no pairs in file", file=path)
    return PairDataset(left, right, scores=np.asarray(scores), name=str(path))


# --------------------------------------------------------------------------- DeepMatcher layout
def read_table_records(path: Path) -> dict[str, dict[str, Any]]:
    """Read ``tableA.csv``-style records keyed by their ``id`` column."""
    frame = read_table(path)
    if "id" not in frame.columns:
        raise TwinnetError(f"no 'id' column (columns: {', '.join(map(str, frame.columns))})", file=path)
    records: dict[str, dict[str, Any]] = {}
    for row, rec in enumerate(frame.to_dict(orient="records"), start=first_row(path)):
        rid = rec["id"]
        if is_missing(rid):
            raise TwinnetError("id is empty", file=path, row=row, field="id")
        rid = str(rid).strip()
        if rid in records:
            raise TwinnetError(f"id {rid!r} appears twice", file=path, row=row, field="id")
        records[rid] = {k: (None if is_missing(v) else v) for k, v in rec.items()}
    return records


def _find_table(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.csv", folder / f"{stem}_partial.csv"):
        if candidate.exists():
            return candidate
    raise TwinnetError(f"no {stem}.csv in this folder (DeepMatcher layout: tableA.csv, tableB.csv, "
                       "train.csv, valid.csv, test.csv)", file=folder)


def read_deepmatcher(folder: str | os.PathLike[str], split: str = "train", *,
                     allow_empty_records: bool = False,
                     _tables: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None) -> PairDataset:
    """Read one split of a DeepMatcher-layout folder (``ltable_id,rtable_id,label`` over two tables)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TwinnetError("folder not found", file=folder)
    table_a, table_b = _tables or (read_table_records(_find_table(folder, "tableA")),
                                   read_table_records(_find_table(folder, "tableB")))
    split_path = folder / f"{split}.csv"
    frame = read_table(split_path)
    for column in ("ltable_id", "rtable_id"):
        if column not in frame.columns:
            raise TwinnetError(f"missing column '{column}' (columns: {', '.join(map(str, frame.columns))})",
                               file=split_path)
    has_labels = "label" in frame.columns
    left, right, labels, left_ids, right_ids = [], [], [], [], []
    for row, (lid, rid, lab) in enumerate(zip(frame["ltable_id"], frame["rtable_id"],
                                              frame["label"] if has_labels else [None] * len(frame))):
        line = row + first_row(split_path)
        for value, table, column, side in ((lid, table_a, "ltable_id", "tableA"), (rid, table_b, "rtable_id", "tableB")):
            key = "" if is_missing(value) else str(value).strip()
            if key not in table:
                raise TwinnetError(f"id {key!r} is not in {side}", file=split_path, row=line, field=column)
        lkey, rkey = str(lid).strip(), str(rid).strip()
        left.append(table_a[lkey])
        right.append(table_b[rkey])
        left_ids.append(f"A:{lkey}")
        right_ids.append(f"B:{rkey}")
        if has_labels:
            labels.append(parse_label(lab, file=split_path, row=line))
    dataset = PairDataset(left, right, np.asarray(labels) if has_labels else None, left_ids, right_ids,
                          name=str(split_path))
    if not allow_empty_records:
        start = first_row(split_path)
        _reject_empty_records(dataset, split_path, range(start, start + len(dataset)))
    return dataset


def read_deepmatcher_splits(folder: str | os.PathLike[str], splits=SPLITS, **options: Any) -> dict[str, PairDataset]:
    """Read several splits, loading the two tables once."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TwinnetError("folder not found", file=folder)
    tables = (read_table_records(_find_table(folder, "tableA")), read_table_records(_find_table(folder, "tableB")))
    return {split: read_deepmatcher(folder, split, _tables=tables, **options) for split in splits}


# --------------------------------------------------------------------------- Ditto layout
def read_ditto(path: str | os.PathLike[str], *, allow_empty_records: bool = False) -> PairDataset:
    """Read Ditto's ``COL a VAL v …<TAB>COL a VAL v …<TAB>label`` lines (the label is optional)."""
    path = Path(path)
    lines = _utf8_lines(path)
    left, right, labels, line_numbers = [], [], [], []
    labelled: bool | None = None
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        line_numbers.append(row)
        cells = line.split("\t")
        if len(cells) not in (2, 3):
            raise TwinnetError(f"expected 2 or 3 tab-separated fields, found {len(cells)}", file=path, row=row)
        if labelled is None:
            labelled = len(cells) == 3
        elif labelled != (len(cells) == 3):
            raise TwinnetError("some lines have a label and some do not", file=path, row=row, field="label")
        for cell, side, out in ((cells[0], "left", left), (cells[1], "right", right)):
            try:
                out.append(parse_colval(cell) if "COL " in cell else clean_text(cell))
            except ValueError as exc:
                raise TwinnetError(str(exc), file=path, row=row, field=side) from None
        if labelled:
            labels.append(parse_label(cells[2], file=path, row=row))
    if not left:
        raise TwinnetError("no pairs in file", file=path)
    dataset = PairDataset(left, right, np.asarray(labels) if labelled else None, name=str(path))
    if not allow_empty_records:
        _reject_empty_records(dataset, path, line_numbers)
    return dataset


# --------------------------------------------------------------------------- plain pair files
def _check_ids_name_one_record(left: list, right: list, left_ids: list[str], right_ids: list[str], name: str,
                               start: int) -> None:
    """``left_id`` and ``right_id`` share one namespace: an id is one record wherever it appears, which is what
    leakage checks, seen/unseen evaluation and entity groups rely on. Two different records under one id (most
    often ids of two tables that overlap, e.g. row numbers of table A and of table B) would silently merge
    them, so it is refused with both places named."""
    first: dict[str, tuple[int, str, str]] = {}
    for offset, (lid, rid, lrec, rrec) in enumerate(zip(left_ids, right_ids, left, right)):
        for side, rec_id, record in (("left", lid, lrec), ("right", rid, rrec)):
            if not rec_id:
                continue
            content = json.dumps(record, sort_keys=True, default=str, ensure_ascii=False)
            seen = first.setdefault(rec_id, (start + offset, side, content))
            if seen[2] != content:
                raise TwinnetError(
                    f"id {rec_id!r} names two different records (row {seen[0]} {seen[1]}_id and this row's "
                    f"{side}_id); left_id and right_id share one namespace, so ids from two tables must not "
                    "overlap: prefix them (e.g. 'a:17', 'b:17')", file=name, row=start + offset, field=f"{side}_id")


def read_pairs(source: str | os.PathLike[str] | pd.DataFrame, *, require_labels: bool = False,
               allow_empty_records: bool = False) -> PairDataset:
    """Read a pair table (CSV, TSV, JSONL, Parquet, or a DataFrame).

    Columns: ``left``/``right`` with the two texts, or ``left_<attr>``/``right_<attr>`` attribute
    columns; optional ``label`` (0/1) or ``score`` (graded similarity, any finite number), and
    ``left_id``/``right_id``.
    """
    if isinstance(source, pd.DataFrame):
        frame, name = source, "<DataFrame>"
        start = first_row(None)
    else:
        name = str(source)
        frame = read_table(source)
        start = first_row(source)
    columns = [str(c) for c in frame.columns]
    id_columns = {"left_id", "right_id"}
    if "left" in columns and "right" in columns:
        left_attrs = right_attrs = None
    else:
        left_attrs = [c[5:] for c in columns if c.startswith("left_") and c not in id_columns]
        right_attrs = [c[6:] for c in columns if c.startswith("right_") and c not in id_columns]
        if not left_attrs or not right_attrs:
            raise TwinnetError("needs 'left' and 'right' text columns, or 'left_<attr>'/'right_<attr>' "
                               f"attribute columns (columns found: {', '.join(columns) or 'none'})", file=name)
    if require_labels and "label" not in columns and "score" not in columns:
        raise TwinnetError(f"missing column 'label' (columns found: {', '.join(columns)})", file=name)
    if "label" in columns and "score" in columns:
        raise TwinnetError("has both 'label' (same/different) and 'score' (graded) columns; keep one", file=name)
    graded = "score" in columns

    rows = frame.to_dict(orient="records")
    left, right, labels = [], [], []
    for i, rec in enumerate(rows):
        line = i + start
        if left_attrs is None:
            for side, out in (("left", left), ("right", right)):
                value = rec[side]
                if is_missing(value) or not clean_text(value):
                    raise TwinnetError("text is empty or missing", file=name, row=line, field=side)
                out.append(clean_text(value))
        else:
            left.append({a: rec[f"left_{a}"] for a in left_attrs})
            right.append({a: rec[f"right_{a}"] for a in right_attrs})
        if "label" in columns:
            labels.append(parse_label(rec["label"], file=name, row=line))
        elif graded:
            labels.append(parse_score(rec["score"], file=name, row=line))
    if not left:
        raise TwinnetError("no pairs in file", file=name)

    def ids(column: str, records: list) -> list[str]:
        if column in columns:
            return [str(rec[column]) for rec in rows]
        return [text_id(r) if isinstance(r, str) else "" for r in records]

    left_ids, right_ids = ids("left_id", left), ids("right_id", right)
    if "left_id" in columns or "right_id" in columns:
        _check_ids_name_one_record(left, right, left_ids, right_ids, name, start)
    dataset = PairDataset(left, right, np.asarray(labels) if "label" in columns else None,
                          left_ids if all(left_ids) else [], right_ids if all(right_ids) else [],
                          name=name, scores=np.asarray(labels) if graded else None)
    if not allow_empty_records:
        _reject_empty_records(dataset, name, range(start, start + len(dataset)))
    return dataset


def _reject_empty_records(dataset: PairDataset, file: object, rows: Sequence[int]) -> None:
    """``rows``: the row number error messages give each pair (its line in the file)."""
    for side, records in (("left", dataset.left), ("right", dataset.right)):
        for i, record in enumerate(records):
            values = [record] if isinstance(record, str) else [v for k, v in record.items() if k != "id"]
            if not any(clean_text(v) for v in values):
                raise TwinnetError("record is empty (every attribute missing); fix it or drop the pair",
                                   file=file, row=rows[i], field=side)


def read_any(path: str | os.PathLike[str], split: str | None = None, **options: Any) -> PairDataset:
    """Read pair data in whichever layout ``path`` has.

    A folder is the DeepMatcher layout (``split`` picks the pair file, default ``test``); a ``.txt``
    file (or a Ditto name like ``train.txt.small``) is the Ditto layout; a file named ``sts-*`` is the
    STS Benchmark layout (graded scores); anything else is a plain pair table.
    """
    path = Path(path)
    if path.is_dir():
        return read_deepmatcher(path, split or "test", **options)
    if not path.exists():
        raise TwinnetError("file not found", file=path)
    if path.name.startswith("sts-"):
        return read_sts(path)
    if path.suffix == ".txt" or ".txt." in path.name:
        return read_ditto(path, **options)
    return read_pairs(path, **options)


# --------------------------------------------------------------------------- one record per row
def iter_records(path: str | os.PathLike[str], *, id_column: str = "id", text_column: str = "text",
                 ignore: tuple[str, ...] = (), chunk_rows: int = 50_000):
    """Yield ``(ids, records)`` chunks from a table with one record per row.

    A ``text`` column is used as the record's text; otherwise every column but the id and ``ignore``
    (e.g. a ground-truth column) is an attribute. Rows without an id get their row number. Empty records
    and repeated ids are errors that name the row (see :func:`twinnet.io.first_row`).
    """
    from twinnet.io import iter_table

    path = Path(path)
    seen: set[str] = set()
    row = start = first_row(path)
    for frame in iter_table(path, chunk_rows):
        columns = [str(c) for c in frame.columns]
        if {"left", "right"} <= set(columns) or any(c.startswith(("left_", "right_")) for c in columns):
            raise TwinnetError("this looks like a pair file (left/right columns); this command takes one record "
                               "per row (a `text` column, or attribute columns)", file=path)
        missing = [c for c in ignore if c not in columns]
        if missing:
            raise TwinnetError(f"no column {missing[0]!r} to ignore (columns: {', '.join(columns)})", file=path)
        ids = (frame[id_column].tolist() if id_column in columns
               else [str(row - start + i) for i in range(len(frame))])
        if text_column in columns:
            records: list[Any] = frame[text_column].tolist()
        else:
            keep = [c for c in columns if c != id_column and c not in ignore]
            if not keep:
                raise TwinnetError("no attribute columns besides the id", file=path)
            records = frame[keep].to_dict(orient="records")
        clean_ids = []
        for i, (rid, record) in enumerate(zip(ids, records)):
            if is_missing(rid) or not str(rid).strip():
                raise TwinnetError("id is empty", file=path, row=row + i, field=id_column)
            rid = str(rid).strip()
            if rid in seen:
                raise TwinnetError(f"id {rid!r} appears twice", file=path, row=row + i, field=id_column)
            seen.add(rid)
            clean_ids.append(rid)
            if isinstance(record, dict):
                empty = not any(clean_text(v) for v in record.values())
            else:
                empty = is_missing(record) or not clean_text(record)
            if empty:
                raise TwinnetError("record is empty or missing", file=path, row=row + i,
                                   field=text_column if text_column in columns else None)
        row += len(frame)
        yield clean_ids, records


def read_records(path: str | os.PathLike[str], **options: Any) -> tuple[list[str], list[Any]]:
    """All of :func:`iter_records` at once: ``(ids, records)``."""
    ids: list[str] = []
    records: list[Any] = []
    for chunk_ids, chunk in iter_records(path, **options):
        ids.extend(chunk_ids)
        records.extend(chunk)
    return ids, records


def _utf8_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, or an error naming the file (missing, or the first byte that is not UTF-8)."""
    if not path.exists():
        raise TwinnetError("file not found", file=path)
    try:
        return path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise not_utf8(path) from None

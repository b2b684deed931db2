"""Duplicate detection and record linkage over whole collections: block -> verify -> cluster.

1. **Embed** every record once, in chunks (``chunk_size`` records at a time).
2. **Block**: each record's ``k`` nearest neighbours from a :class:`~twinnet.index.VectorIndex` are its
   candidate pairs, so the work is ``n * k`` pairs, never ``n * n``.
3. **Verify**: candidates are scored by exact cosine similarity and kept when the score reaches the
   model's calibrated threshold; each kept pair gets the calibrated probability of "same".
4. **Cluster** the kept pairs:

   - ``centre`` (default): pairs are taken from the most to the least similar; the first time a record is
     seen unassigned it becomes a cluster centre, and a record joins a cluster only through a direct match
     with its centre. A chain A~B, B~C with a weak or missing A~C link stays two clusters, because C never
     matched the centre A.
   - ``components``: connected components of the kept pairs. Any chain of matches merges, so one weak link
     can join two distinct entities; use it when matches are transitive by construction.
   - ``one_to_one`` (for linking two duplicate-free sources): the most similar pairs first, each record in
     at most one pair.

Memory is ``O(n * (d + k))``: the embeddings, the index and the candidate list.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from twinnet.errors import TwinnetError
from twinnet.index import positional_index

if TYPE_CHECKING:
    from twinnet.data.pairs import PairDataset

CLUSTERINGS = ("centre", "components", "one_to_one")


@dataclass
class Candidates:
    """Candidate pairs as row positions (``left`` into the first collection, ``right`` into the second, or
    into the same one when deduplicating, with ``left < right``) and their cosine scores."""

    left: np.ndarray
    right: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.left)

    def take(self, mask: np.ndarray) -> Candidates:
        return Candidates(self.left[mask], self.right[mask], self.scores[mask])


@dataclass
class MatchResult:
    """What :func:`deduplicate` and :func:`link` return.

    ``clusters``: one row per record (``id``, ``cluster``; ``source`` when linking).
    ``pairs``: the kept pairs (``left_id``, ``right_id``, ``score``, ``probability``, ``in_cluster``: whether
    the clustering put both records together).
    ``stats``: counts and timings.
    """

    clusters: pd.DataFrame
    pairs: pd.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- embedding
def embed_in_chunks(model: Any, chunks: Iterable[tuple[Sequence[Any], Sequence[Any]]], *, batch_size: int = 64,
                    progress: Callable[[int], None] | None = None) -> tuple[list[str], np.ndarray]:
    """Embed ``(ids, records)`` chunks one at a time; returns all ids and one embedding matrix."""
    all_ids: list[str] = []
    parts: list[np.ndarray] = []
    for ids, records in chunks:
        if len(ids) != len(records):
            raise TwinnetError(f"{len(ids)} ids for {len(records)} records")
        offset = len(all_ids)
        try:
            parts.append(model.embed(list(records), batch_size=batch_size))
        except TwinnetError as exc:  # name the row in the whole collection, not in the chunk
            raise TwinnetError(_shift_item(str(exc), offset)) from None
        all_ids.extend(str(i) for i in ids)
        if progress is not None:
            progress(len(ids))
    if not parts:
        return [], np.zeros((0, _dimension(model)), dtype=np.float32)
    _check_unique(all_ids)
    return all_ids, np.concatenate(parts).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------- blocking
def block(embeddings: np.ndarray, other: np.ndarray | None = None, *, k: int = 10, index_kind: str = "auto",
          chunk_size: int = 8192, **index_options: Any) -> Candidates:
    """k-nearest-neighbour candidate pairs.

    With one matrix (deduplication), each row's ``k`` neighbours other than itself; pairs are unordered and
    listed once. With ``other`` (linkage), each row of ``embeddings`` gets its ``k`` nearest rows of
    ``other``. Scores are exact cosine similarities, whatever the index kind.
    """
    if k < 1:
        raise TwinnetError(f"k must be at least 1, got {k}")
    queries = _normalised(embeddings)
    stored = queries if other is None else _normalised(other)
    if len(stored) == 0 or len(queries) == 0:
        return Candidates(*_empty_pairs())
    # labels are row numbers: no string ids for a one-off search, so memory is the vectors themselves
    index = positional_index(stored, kind=auto_index_kind(index_kind, len(stored)), chunk_size=chunk_size * 8,
                             **index_options)
    width = min(k + (other is None), len(stored))
    lefts, rights = [], []
    for start in range(0, len(queries), chunk_size):
        _, labels = index.search_labels(queries[start: start + chunk_size], width)
        rows = np.repeat(np.arange(start, start + len(labels)), width)
        cols = labels.ravel()
        keep = cols >= 0
        if other is None:
            keep &= cols != rows
        lefts.append(rows[keep])
        rights.append(cols[keep])
    left, right = np.concatenate(lefts), np.concatenate(rights)
    if other is None:  # unordered pairs, each once
        left, right = np.minimum(left, right), np.maximum(left, right)
        keys = np.unique(left * np.int64(len(stored)) + right)
        left, right = keys // len(stored), keys % len(stored)
    scores = _row_dot(queries, stored, left, right)
    return Candidates(left.astype(np.int64), right.astype(np.int64), scores)


# ---------------------------------------------------------------------------------------------- clustering
def cluster(n: int, pairs: Candidates, method: str = "centre") -> np.ndarray:
    """Cluster label per node ``0..n-1`` from kept pairs (see the module docstring for the methods)."""
    if method not in CLUSTERINGS:
        raise TwinnetError(f"clustering must be one of {', '.join(CLUSTERINGS)}, got {method!r}")
    if method == "components":
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        graph = coo_matrix((np.ones(len(pairs)), (pairs.left, pairs.right)), shape=(n, n))
        return connected_components(graph, directed=False)[1].astype(np.int64)
    order = np.lexsort((pairs.right, pairs.left, -pairs.scores))  # best first; ties in a fixed order
    labels = np.full(n, -1, dtype=np.int64)
    is_centre = np.zeros(n, dtype=bool)
    for a, b in zip(pairs.left[order].tolist(), pairs.right[order].tolist()):
        if method == "one_to_one":
            if labels[a] < 0 and labels[b] < 0:
                labels[a] = labels[b] = a
            continue
        la, lb = labels[a], labels[b]
        if la < 0 and lb < 0:
            labels[a] = labels[b] = a
            is_centre[a] = True
        elif la < 0 and is_centre[b]:
            labels[a] = b
        elif lb < 0 and is_centre[a]:
            labels[b] = a
    singletons = labels < 0
    labels[singletons] = np.nonzero(singletons)[0]
    _, dense = np.unique(labels, return_inverse=True)
    return dense.astype(np.int64)


# ---------------------------------------------------------------------------------------------- pipelines
def deduplicate_embeddings(embeddings: np.ndarray, ids: Sequence[Any], *, threshold: float, k: int = 10,
                           clustering: str = "centre", probability: Callable[[np.ndarray], np.ndarray] | None = None,
                           index_kind: str = "auto", **index_options: Any) -> MatchResult:
    """Block, verify and cluster one collection of precomputed embeddings."""
    ids = [str(i) for i in ids]
    _check_unique(ids)
    if len(ids) != len(embeddings):
        raise TwinnetError(f"{len(ids)} ids for {len(embeddings)} embeddings")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    candidates = block(embeddings, k=k, index_kind=index_kind, **index_options)
    timings["block_s"] = time.perf_counter() - started
    return _finish(candidates, ids, ids, threshold, clustering, probability, timings, link=False,
                   stats={"records": len(ids), "k": k, "index_kind": auto_index_kind(index_kind, len(ids))})


def link_embeddings(embeddings_a: np.ndarray, ids_a: Sequence[Any], embeddings_b: np.ndarray,
                    ids_b: Sequence[Any], *, threshold: float, k: int = 10, clustering: str = "centre",
                    probability: Callable[[np.ndarray], np.ndarray] | None = None, index_kind: str = "auto",
                    **index_options: Any) -> MatchResult:
    """Link two collections: each record of A is compared with its ``k`` nearest records of B."""
    ids_a, ids_b = [str(i) for i in ids_a], [str(i) for i in ids_b]
    _check_unique(ids_a, "A")
    _check_unique(ids_b, "B")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    candidates = block(embeddings_a, embeddings_b, k=k, index_kind=index_kind, **index_options)
    timings["block_s"] = time.perf_counter() - started
    return _finish(candidates, ids_a, ids_b, threshold, clustering, probability, timings, link=True,
                   stats={"records_a": len(ids_a), "records_b": len(ids_b), "k": k,
                          "index_kind": auto_index_kind(index_kind, len(ids_b))})


def deduplicate(model: Any, records: Sequence[Any], ids: Sequence[Any] | None = None, *, k: int = 10,
                threshold: float | None = None, fmr: float | None = None, clustering: str = "centre",
                index_kind: str = "auto", batch_size: int = 64, chunk_size: int = 4096,
                progress: Callable[[int], None] | None = None) -> MatchResult:
    """Find duplicates in one collection with a calibrated model (its stored threshold unless given)."""
    cut = model.decision_threshold(threshold, fmr=fmr)
    ids = list(range(len(records))) if ids is None else list(ids)
    started = time.perf_counter()
    all_ids, emb = embed_in_chunks(model, _chunks(ids, records, chunk_size), batch_size=batch_size, progress=progress)
    embed_s = time.perf_counter() - started
    result = deduplicate_embeddings(emb, all_ids, threshold=cut, k=k, clustering=clustering,
                                    probability=probability_map(model), index_kind=index_kind)
    result.stats["embed_s"] = embed_s
    return result


def link(model: Any, records_a: Sequence[Any], records_b: Sequence[Any], ids_a: Sequence[Any] | None = None,
         ids_b: Sequence[Any] | None = None, *, k: int = 10, threshold: float | None = None,
         fmr: float | None = None, clustering: str = "centre", index_kind: str = "auto", batch_size: int = 64,
         chunk_size: int = 4096, progress: Callable[[int], None] | None = None) -> MatchResult:
    """Match records of A to records of B with a calibrated model."""
    cut = model.decision_threshold(threshold, fmr=fmr)
    ids_a = list(range(len(records_a))) if ids_a is None else list(ids_a)
    ids_b = list(range(len(records_b))) if ids_b is None else list(ids_b)
    started = time.perf_counter()
    a_ids, a_emb = embed_in_chunks(model, _chunks(ids_a, records_a, chunk_size), batch_size=batch_size,
                                   progress=progress)
    b_ids, b_emb = embed_in_chunks(model, _chunks(ids_b, records_b, chunk_size), batch_size=batch_size,
                                   progress=progress)
    embed_s = time.perf_counter() - started
    result = link_embeddings(a_emb, a_ids, b_emb, b_ids, threshold=cut, k=k, clustering=clustering,
                             probability=probability_map(model), index_kind=index_kind)
    result.stats["embed_s"] = embed_s
    return result


# ---------------------------------------------------------------------------------------------- training data
def mine_training_pairs(model: Any, records: Sequence[Any], ids: Sequence[Any], entities: Sequence[Any], *,
                        k: int = 10, positives_per_record: int = 3, negatives_per_record: int = 3,
                        seed: int = 0, batch_size: int = 64) -> PairDataset:
    """Labelled pairs from a collection whose records carry an entity id (a deduplicated training set).

    Positives: up to ``positives_per_record`` other records of the same entity, drawn at random. Negatives:
    the ``negatives_per_record`` most similar records *of other entities* among the record's ``k`` nearest
    neighbours under ``model`` -- the hard negatives a k-NN blocker will hand the matcher later.
    """
    from twinnet.data.pairs import PairDataset

    ids = [str(i) for i in ids]
    entities = [str(e) for e in entities]
    if not len(ids) == len(records) == len(entities):
        raise TwinnetError(f"{len(records)} records, {len(ids)} ids and {len(entities)} entity ids")
    _check_unique(ids)
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = {}
    for row, entity in enumerate(entities):
        members.setdefault(entity, []).append(row)
    pairs: set[tuple[int, int, int]] = set()
    for group in members.values():
        if len(group) < 2:
            continue
        for row in group:
            others = [r for r in group if r != row]
            for other in rng.permutation(others)[:positives_per_record].tolist():
                pairs.add((min(row, other), max(row, other), 1))
    embeddings = model.embed(list(records), batch_size=batch_size)
    candidates = block(embeddings, k=k)
    entity_codes = np.unique(np.asarray(entities), return_inverse=True)[1]
    different = entity_codes[candidates.left] != entity_codes[candidates.right]
    hard = candidates.take(different)
    order = np.lexsort((-hard.scores, hard.left))
    taken: dict[int, int] = {}
    for a, b in zip(hard.left[order].tolist(), hard.right[order].tolist()):
        if taken.get(a, 0) < negatives_per_record:
            taken[a] = taken.get(a, 0) + 1
            pairs.add((a, b, 0))
    chosen = sorted(pairs)
    return PairDataset(left=[records[a] for a, _, _ in chosen], right=[records[b] for _, b, _ in chosen],
                       labels=np.asarray([y for _, _, y in chosen], dtype=np.int64),
                       left_ids=[ids[a] for a, _, _ in chosen], right_ids=[ids[b] for _, b, _ in chosen],
                       name="mined pairs")


# ---------------------------------------------------------------------------------------------- helpers
def _finish(candidates: Candidates, ids_a: list[str], ids_b: list[str], threshold: float, clustering: str,
            probability: Callable[[np.ndarray], np.ndarray] | None, timings: dict[str, float], *, link: bool,
            stats: dict[str, Any]) -> MatchResult:
    if clustering not in CLUSTERINGS:
        raise TwinnetError(f"clustering must be one of {', '.join(CLUSTERINGS)}, got {clustering!r}")
    started = time.perf_counter()
    kept = candidates.take(candidates.scores >= threshold)
    probabilities = probability(kept.scores.astype(np.float64)) if probability is not None and len(kept) else \
        np.full(len(kept), np.nan)
    timings["verify_s"] = time.perf_counter() - started
    started = time.perf_counter()
    offset = len(ids_a) if link else 0
    nodes = Candidates(kept.left, kept.right + offset, kept.scores)
    labels = cluster(len(ids_a) + (len(ids_b) if link else 0), nodes, clustering)
    timings["cluster_s"] = time.perf_counter() - started
    if link:
        clusters = pd.DataFrame({"id": ids_a + ids_b, "source": ["A"] * len(ids_a) + ["B"] * len(ids_b),
                                 "cluster": labels})
    else:
        clusters = pd.DataFrame({"id": ids_a, "cluster": labels})
    a_names, b_names = np.asarray(ids_a, dtype=object), np.asarray(ids_b, dtype=object)
    pairs = pd.DataFrame({"left_id": a_names[kept.left], "right_id": b_names[kept.right],
                          "score": kept.scores.astype(np.float64), "probability": probabilities,
                          "in_cluster": labels[nodes.left] == labels[nodes.right]})
    pairs = pairs.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    stats.update({"candidates": len(candidates), "kept_pairs": len(kept), "threshold": float(threshold),
                  "clustering": clustering, "clusters": int(labels.max() + 1) if len(labels) else 0,
                  "clusters_with_2_or_more": int((np.bincount(labels) > 1).sum()) if len(labels) else 0,
                  **timings})
    return MatchResult(clusters, pairs, stats)


def _chunks(ids: Sequence[Any], records: Sequence[Any], size: int) -> Iterable[tuple[Sequence[Any], Sequence[Any]]]:
    if len(ids) != len(records):
        raise TwinnetError(f"{len(ids)} ids for {len(records)} records")
    for start in range(0, len(records), size):
        yield ids[start: start + size], records[start: start + size]


def probability_map(model: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    return model.calibration_.predict_proba if getattr(model, "calibration_", None) is not None else None


def auto_index_kind(kind: str, n: int) -> str:
    """Exact search up to 200k vectors; beyond, IVF over 8-bit vectors (near-linear time, a quarter of the
    memory). Candidate scores are recomputed exactly from the embeddings either way."""
    if kind != "auto":
        return kind
    return "flat" if n <= 200_000 else "ivfsq"


def _normalised(matrix: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Unit-length rows; the input itself when it is already so. Checked and measured in row chunks, so that a
    million embeddings do not get a full-size temporary copy (or two) just to be validated."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise TwinnetError(f"embeddings must be a 2-D matrix, got shape {matrix.shape}")
    norms = np.empty(len(matrix), dtype=np.float32)
    for start in range(0, len(matrix), chunk):
        block = matrix[start: start + chunk]
        if not np.isfinite(block).all():
            raise TwinnetError("embeddings hold NaN or infinite values")
        norms[start: start + len(block)] = np.sqrt(np.einsum("ij,ij->i", block, block))
    if np.allclose(norms, 1.0, atol=1e-4):
        return matrix
    return matrix / np.clip(norms, 1e-12, None)[:, None]


def _row_dot(a: np.ndarray, b: np.ndarray, rows: np.ndarray, cols: np.ndarray, chunk: int = 1 << 15) -> np.ndarray:
    # each chunk gathers two (chunk x dimension) blocks: 32k rows of 384 floats are 50 MB each, 1M rows were 1.5 GB
    out = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), chunk):
        r, c = rows[start: start + chunk], cols[start: start + chunk]
        out[start: start + len(r)] = np.einsum("ij,ij->i", a[r], b[c])
    return out


def _empty_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)


def _check_unique(ids: Sequence[str], which: str = "") -> None:
    seen: set[str] = set()
    for row, record_id in enumerate(ids):
        if record_id in seen:
            where = f" in {which}" if which else ""
            raise TwinnetError(f"record id {record_id!r} appears twice{where} (row {row}); ids must be unique")
        seen.add(record_id)


def _shift_item(message: str, offset: int) -> str:
    import re

    return re.sub(r"\bitem (\d+)", lambda m: f"item {int(m.group(1)) + offset}", message, count=1)


def _dimension(model: Any) -> int:
    dimension = getattr(model, "embedding_dim", None)
    return int(dimension) if dimension and dimension > 0 else 0

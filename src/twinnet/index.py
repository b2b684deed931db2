"""VectorIndex: embeddings searchable by cosine similarity, over faiss.

Vectors are L2-normalised on the way in, so faiss's inner product is the model's cosine score. Records are
known by string ids; an id added again replaces its old vector (upsert), so it is never returned twice.

Kinds (``kind=``):

- ``flat``: exact search (the default); right up to a few hundred thousand vectors.
- ``hnsw``: graph search, approximate, fast queries, no training; deletions are kept as tombstones and
  filtered out of every search.
- ``ivf``: inverted lists over k-means cells (trained on the first vectors added), approximate;
  ``nprobe`` cells are searched per query.
- ``ivfsq``: ``ivf`` with vectors stored as 8-bit scalars (a quarter of the memory, scores within ~1e-2).
- ``ivfpq``: ``ivf`` with product-quantised vectors (smallest memory, approximate scores).

A saved index is a folder: ``index.faiss``, ``ids.parquet`` (faiss label -> id), optional
``metadata.parquet``, and ``manifest.json`` naming the model's fingerprint, the dimension and the
normalisation. Loading it to search with another model is refused.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twinnet.errors import TwinnetError
from twinnet.io import atomic_folder

KINDS = ("flat", "hnsw", "ivf", "ivfsq", "ivfpq")
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class Neighbors:
    """Search results for a batch of queries: row ``i`` holds query ``i``'s hits, best first.

    ``ids`` is an object array (``None`` where a query has fewer hits than columns), ``scores`` the cosine
    similarities (NaN there), ``probabilities`` the calibrated P(same) when a calibrated model was given.
    """

    ids: np.ndarray
    scores: np.ndarray
    probabilities: np.ndarray | None = None

    def hits(self, row: int) -> list[dict[str, Any]]:
        out = []
        for j, found in enumerate(self.ids[row]):
            if found is None:
                break
            hit = {"id": found, "score": float(self.scores[row, j])}
            if self.probabilities is not None:
                hit["probability"] = float(self.probabilities[row, j])
            out.append(hit)
        return out

    def __len__(self) -> int:
        return len(self.ids)


class VectorIndex:
    """Cosine-similarity search over vectors known by string ids.

    Parameters
    ----------
    dimension: length of each vector.
    kind: ``flat`` (exact), ``hnsw``, ``ivf`` or ``ivfpq`` (see the module docstring).
    model_fingerprint: the fingerprint of the model whose embeddings are stored (checked on search).
    hnsw_m, ef_construction, ef_search: HNSW graph degree and search breadth.
    nlist, nprobe: IVF cells (default ``4 * sqrt(n)`` of the first batch) and cells visited per query.
    pq_m: sub-quantisers for ``ivfpq`` (must divide ``dimension``).
    """

    def __init__(self, dimension: int, *, kind: str = "flat", model_fingerprint: str | None = None,
                 model_name: str | None = None, hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 64,
                 nlist: int | None = None, nprobe: int = 16, pq_m: int | None = None) -> None:
        if kind not in KINDS:
            raise TwinnetError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if dimension < 1:
            raise TwinnetError(f"dimension must be positive, got {dimension}")
        self.dimension = int(dimension)
        self.kind = kind
        self.model_fingerprint = model_fingerprint
        self.model_name = model_name
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        self.nlist, self.nprobe, self.pq_m = nlist, nprobe, pq_m
        self._faiss: Any = None        # built lazily: IVF kinds are trained on the first vectors added
        self._label_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._next_label = 0
        self._tombstones: set[int] = set()  # hnsw cannot remove vectors; dead labels are filtered instead
        self.metadata: pd.DataFrame | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, model: Any, records: Sequence[Any], ids: Sequence[Any] | None = None, *, kind: str = "flat",
              batch_size: int = 64, chunk_size: int = 4096, metadata: pd.DataFrame | None = None,
              progress: Any = None, **options: Any) -> VectorIndex:
        """Embed ``records`` with ``model`` in chunks and index them (ids default to positions)."""
        ids = [str(i) for i in range(len(records))] if ids is None else [str(i) for i in ids]
        if len(ids) != len(records):
            raise TwinnetError(f"{len(ids)} ids for {len(records)} records")
        index = cls(_model_dimension(model), kind=kind, model_fingerprint=model.fingerprint(),
                    model_name=_model_name(model), **options)
        for start in range(0, len(records), chunk_size):
            chunk = list(records[start: start + chunk_size])
            index.add(ids[start: start + chunk_size], model.embed(chunk, batch_size=batch_size))
            if progress is not None:
                progress(len(chunk))
        if metadata is not None:
            index.set_metadata(metadata, ids)
        return index

    def train(self, sample: np.ndarray) -> None:
        """Create the faiss index, training IVF cells on ``sample`` (a random sample of what will be added).

        Optional: without it, the first :meth:`add` trains on its own vectors."""
        if self._faiss is not None:
            raise TwinnetError("the index is already trained")
        self._faiss = self._new_faiss(self._checked(sample))

    def add(self, ids: Sequence[Any], vectors: np.ndarray) -> None:
        """Add vectors; an id that is already present (or repeated in ``ids``) keeps only its last vector."""
        vectors = self._checked(vectors)
        ids = [str(i) for i in ids]
        if len(ids) != len(vectors):
            raise TwinnetError(f"{len(ids)} ids for {len(vectors)} vectors")
        if not ids:
            return
        last = {i: n for n, i in enumerate(ids)}  # a repeated id within one call: its last vector wins
        if len(last) < len(ids):
            keep = np.asarray(sorted(last.values()))
            ids, vectors = [ids[n] for n in keep], vectors[keep]
        self.delete([i for i in ids if i in self._label_of])
        if self._faiss is None:
            self._faiss = self._new_faiss(vectors)
        labels = np.arange(self._next_label, self._next_label + len(ids), dtype=np.int64)
        self._next_label += len(ids)
        self._faiss.add_with_ids(vectors, labels)
        for label, record_id in zip(labels.tolist(), ids):
            self._label_of[record_id] = label
            self._id_of[label] = record_id

    upsert = add

    def delete(self, ids: Iterable[Any]) -> int:
        """Remove ids (unknown ids are ignored); returns how many were removed."""
        labels = [self._label_of.pop(str(i)) for i in ids if str(i) in self._label_of]
        if not labels:
            return 0
        for label in labels:
            del self._id_of[label]
        if self.kind == "hnsw":
            self._tombstones.update(labels)
        else:
            self._faiss.remove_ids(np.asarray(labels, dtype=np.int64))
        if self.metadata is not None:
            self.metadata = self.metadata[self.metadata.index.isin(self._label_of.keys())]
        return len(labels)

    def set_metadata(self, frame: pd.DataFrame, ids: Sequence[Any] | None = None) -> None:
        """Attach per-record columns (returned with search hits); ``ids`` default to ``frame['id']``."""
        frame = frame.copy()
        if ids is None:
            if "id" not in frame.columns:
                raise TwinnetError("metadata needs an 'id' column or explicit ids")
            ids = frame.pop("id").tolist()
        frame.index = pd.Index([str(i) for i in ids], name="id")
        frame = frame[~frame.index.duplicated(keep="last")]
        self.metadata = frame if self.metadata is None else pd.concat(
            [self.metadata[~self.metadata.index.isin(frame.index)], frame])

    # ------------------------------------------------------------------ search
    def __len__(self) -> int:
        return len(self._label_of)

    def __contains__(self, record_id: object) -> bool:
        return str(record_id) in self._label_of

    @property
    def ids(self) -> list[str]:
        return list(self._label_of)

    def search(self, vectors: np.ndarray, k: int = 10, *, chunk_size: int = 4096) -> Neighbors:
        """The ``k`` most similar stored vectors for each query vector (fewer when the index holds fewer)."""
        if k < 1:
            raise TwinnetError(f"k must be at least 1, got {k}")
        vectors = self._checked(vectors)
        width = min(k, len(self))
        ids = np.full((len(vectors), width), None, dtype=object)
        scores = np.full((len(vectors), width), np.nan, dtype=np.float32)
        if width == 0 or len(vectors) == 0:
            return Neighbors(ids, scores)
        for start in range(0, len(vectors), chunk_size):
            found_scores, labels = self.search_labels(vectors[start: start + chunk_size], width)
            rows = slice(start, start + len(labels))
            scores[rows] = np.where(labels >= 0, found_scores, np.nan)
            ids[rows] = self._ids_for(labels)
        return Neighbors(ids, scores)

    def search_labels(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss-level search: (scores, labels) arrays, label -1 where there is no hit. Vectors must be
        normalised already (``search`` does it)."""
        import faiss

        params = None
        if self.kind == "hnsw":
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.fromiter(self._tombstones, dtype=np.int64)))\
                if self._tombstones else None
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k), sel=selector)
        elif self.kind.startswith("ivf"):
            params = faiss.SearchParametersIVF(nprobe=min(self.nprobe, self._faiss.nlist))
        scores, labels = self._faiss.search(np.ascontiguousarray(vectors, dtype=np.float32), k, params=params)
        return scores, labels

    def reconstruct(self, ids: Sequence[Any]) -> np.ndarray:
        """The stored (normalised) vectors of ``ids``; approximate for ``ivfpq``."""
        missing = [i for i in ids if str(i) not in self._label_of]
        if missing:
            raise TwinnetError(f"id {missing[0]!r} is not in the index")
        return np.stack([self._faiss.reconstruct(int(self._label_of[str(i)])) for i in ids]).astype(np.float32)

    def _ids_for(self, labels: np.ndarray) -> np.ndarray:
        lookup = self._id_of
        flat = [lookup.get(int(x)) if x >= 0 else None for x in labels.ravel()]
        return np.asarray(flat, dtype=object).reshape(labels.shape)

    def check_model(self, model: Any) -> None:
        """Refuse a model whose embeddings are not the ones stored here."""
        fingerprint = model.fingerprint()
        if self.model_fingerprint and fingerprint != self.model_fingerprint:
            raise TwinnetError(f"this index was built with another model (fingerprint {self.model_fingerprint}, "
                               f"this model {fingerprint}); rebuild the index with this model or load the one "
                               f"it was built with{f' ({self.model_name})' if self.model_name else ''}")
        dimension = _model_dimension(model)
        if dimension != self.dimension:
            raise TwinnetError(f"the model embeds into {dimension} dimensions but the index holds {self.dimension}")

    # ------------------------------------------------------------------ persistence
    def manifest(self) -> dict[str, Any]:
        return {"format": "twinnet-index", "version": FORMAT_VERSION, "kind": self.kind,
                "dimension": self.dimension, "metric": "cosine", "normalized": True, "count": len(self),
                "model": {"fingerprint": self.model_fingerprint, "name": self.model_name},
                "params": {"hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction,
                           "ef_search": self.ef_search, "nlist": self.nlist, "nprobe": self.nprobe,
                           "pq_m": self.pq_m},
                "next_label": self._next_label, "tombstones": sorted(self._tombstones),
                "metadata": self.metadata is not None}

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
        """Write the index folder atomically: an interrupted save leaves the previous folder intact."""
        import faiss

        target = Path(path)
        with atomic_folder(target, overwrite=overwrite) as staging:
            if self._faiss is not None:
                faiss.write_index(self._faiss, str(staging / "index.faiss"))
            labels = np.fromiter(self._id_of.keys(), dtype=np.int64, count=len(self._id_of))
            pd.DataFrame({"label": labels, "id": list(self._id_of.values())}).to_parquet(
                staging / "ids.parquet", index=False)
            if self.metadata is not None:
                self.metadata.reset_index().to_parquet(staging / "metadata.parquet", index=False)
            (staging / MANIFEST).write_text(json.dumps(self.manifest(), indent=2) + "\n")
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, model: Any = None) -> VectorIndex:
        """Read an index folder; with ``model``, refuse it unless the model's fingerprint matches."""
        import faiss

        folder = Path(path)
        manifest_file = folder / MANIFEST
        if not manifest_file.exists():
            raise TwinnetError("not a twinnet index folder (no manifest.json)", file=folder)
        try:
            manifest = json.loads(manifest_file.read_text())
        except json.JSONDecodeError as exc:
            raise TwinnetError(f"manifest is not valid JSON ({exc.msg})", file=manifest_file) from None
        if manifest.get("format") != "twinnet-index" or manifest.get("version", 0) > FORMAT_VERSION:
            raise TwinnetError("unknown index format or a newer version than this twinnet reads", file=manifest_file)
        index = cls(manifest["dimension"], kind=manifest["kind"], model_fingerprint=manifest["model"]["fingerprint"],
                    model_name=manifest["model"].get("name"), **manifest["params"])
        if (folder / "index.faiss").exists():
            index._faiss = faiss.read_index(str(folder / "index.faiss"))
        ids = pd.read_parquet(folder / "ids.parquet")
        index._id_of = dict(zip(ids["label"].astype(np.int64).tolist(), ids["id"].astype(str).tolist()))
        index._label_of = {v: k for k, v in index._id_of.items()}
        index._next_label = int(manifest["next_label"])
        index._tombstones = set(manifest.get("tombstones", []))
        if manifest.get("metadata") and (folder / "metadata.parquet").exists():
            index.metadata = pd.read_parquet(folder / "metadata.parquet").set_index("id")
        if model is not None:
            index.check_model(model)
        return index

    # ------------------------------------------------------------------ internals
    def _checked(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2 or (len(vectors) and vectors.shape[1] != self.dimension):
            raise TwinnetError(f"vectors must have shape (n, {self.dimension}), got {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise TwinnetError("vectors hold NaN or infinite values")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if np.all(np.abs(norms - 1.0) <= 1e-5):  # already unit length (model embeddings): no copy
            return np.ascontiguousarray(vectors)
        return np.ascontiguousarray(vectors / np.clip(norms, 1e-12, None), dtype=np.float32)

    def _new_faiss(self, first: np.ndarray, *, id_map: bool = True) -> Any:
        """A new faiss index of this kind (IVF cells trained on ``first``). ``id_map=False`` leaves out what
        string ids, upsert and delete need (id maps, a direct map): labels are then the order of addition."""
        import faiss

        d, ip = self.dimension, faiss.METRIC_INNER_PRODUCT
        if self.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(d)) if id_map else faiss.IndexFlatIP(d)
        if self.kind == "hnsw":
            graph = faiss.IndexHNSWFlat(d, self.hnsw_m, ip)
            graph.hnsw.efConstruction = self.ef_construction
            return faiss.IndexIDMap2(graph) if id_map else graph
        # IVF keeps the ids itself; wrapping it in IndexIDMap would break remove_ids.
        nlist = self.nlist or max(1, min(int(4 * math.sqrt(len(first))), len(first) // 39 or 1))
        self.nlist = nlist
        quantizer = faiss.IndexFlatIP(d)
        if self.kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, ip)
        elif self.kind == "ivfsq":
            index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, ip)
        else:
            m = self.pq_m or _default_pq_m(d)
            if d % m:
                raise TwinnetError(f"pq_m={m} must divide the dimension {d}")
            self.pq_m = m
            bits = 8 if len(first) >= 256 * 39 else max(1, int(math.log2(max(len(first) // 39, 2))))
            index = faiss.IndexIVFPQ(quantizer, d, nlist, m, bits, ip)
        if id_map:
            index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct by id, with removals
        sample = first if len(first) <= 200_000 else first[np.random.default_rng(0).choice(len(first), 200_000,
                                                                                           replace=False)]
        index.train(sample)
        index.quantizer_trains_alone = 0
        return index


def positional_index(vectors: np.ndarray, *, kind: str = "flat", chunk_size: int = 65536,
                     **options: Any) -> VectorIndex:
    """An index over unit-length ``vectors`` whose faiss labels are their row numbers, for one-off k-NN
    blocking through :meth:`VectorIndex.search_labels`.

    It keeps no string ids and no direct map (so no upsert, delete or save): for a million vectors the memory is
    the stored vectors alone, where a :class:`VectorIndex` would add two id dictionaries of a million entries.
    IVF cells are trained on a seeded random sample of at most 100,000 rows, not on whatever comes first.
    """
    index = VectorIndex(vectors.shape[1], kind=kind, **options)
    if index.kind.startswith("ivf"):
        sample = np.random.default_rng(0).choice(len(vectors), min(len(vectors), 100_000), replace=False)
        first = vectors[np.sort(sample)]
    else:
        first = vectors[:1]
    index._faiss = index._new_faiss(first, id_map=False)
    for start in range(0, len(vectors), chunk_size):
        index._faiss.add(np.ascontiguousarray(vectors[start: start + chunk_size], dtype=np.float32))
    return index


def _default_pq_m(dimension: int) -> int:
    for m in (48, 32, 24, 16, 12, 8, 6, 4, 2, 1):
        if dimension % m == 0 and dimension // m >= 4:
            return m
    return 1


def _model_dimension(model: Any) -> int:
    dimension = getattr(model, "embedding_dim", None)
    if dimension is None or dimension < 0:
        dimension = model.embed(["dimension probe"]).shape[1]
    return int(dimension)


def _model_name(model: Any) -> str | None:
    encoder = getattr(model, "encoder", None)
    return getattr(encoder, "model_name_or_path", None) or getattr(model, "config_", {}).get("encoder", {}).get(
        "model_name_or_path")

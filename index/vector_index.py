"""One ANN interface, interchangeable FAISS backends (``flat``, ``hnsw``, ``ivf``).

Every backend maps caller ids (non-negative int64, never reused) to vectors and answers
``search(queries, k, allowed_ids)`` with ``(scores, ids)`` arrays of shape ``[q, k]``, padded
with ``-inf`` / ``-1`` when fewer than ``k`` vectors qualify.  Higher scores are better for
every metric:

* ``cosine``: vectors and queries are L2-normalised, score = inner product in [-1, 1];
* ``dot``: score = raw inner product;
* ``l2``: score = minus the Euclidean distance (0 for an identical vector).

Filtered search happens inside the index, never after it: when the allowed subset is small
(``exact_subset_max``) the subset's vectors are scored exactly; otherwise FAISS searches with an
``IDSelectorBitmap``, and any query that comes back with fewer than ``min(k, |allowed|)`` hits
is answered exactly.  So a filtered search returns ``k`` results whenever ``k`` ids qualify.

Thread safety: every FAISS call runs under a readers-writer lock (searches share it, writes
hold it alone), so a search sees the index either before or after a write, never in between.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

import faiss
import numpy as np

from .config import IndexConfig, METRICS
from .errors import DimensionMismatch, InvalidVector
from .locks import RWLock

MAX_ID = 1 << 40  # ids index a dense bitmask
EXACT_SUBSET_MIN = 4096  # subsets up to this size are always scored exactly
EXACT_SUBSET_FRACTION = 0.05  # ... and so are subsets up to 5% of the index
_EXACT_CHUNK = 32768
# Below this many queries a search runs FAISS on one OpenMP thread.  OpenMP's fork/join costs
# milliseconds when the cores are busy (measured: 8 ms vs 0.4 ms for one query on 2 shared
# cores), and concurrent requests already use the cores.  The setting is per calling thread.
SINGLE_THREAD_MAX_QUERIES = 32


@contextmanager
def omp_threads(n: int | None) -> Iterator[None]:
    """Run FAISS calls of the current thread with ``n`` OpenMP threads (None: unchanged)."""
    if n is None:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def prepare_vectors(vectors: Any, dim: int, metric: str, what: str = "vector") -> np.ndarray:
    """float32 C-contiguous [n, dim]; checks the size and finiteness; normalises for cosine
    (a zero vector stays zero)."""
    try:
        with np.errstate(over="ignore"):  # overflow becomes inf, rejected below
            array = np.array(vectors, dtype=np.float32, ndmin=2, copy=True)
    except (TypeError, ValueError) as exc:
        raise InvalidVector(f"{what} must be a list of numbers: {exc}") from None
    if array.ndim != 2:
        raise InvalidVector(f"{what} must be a 1-D vector or a 2-D batch, got {array.ndim}-D")
    if array.shape[1] != dim:
        raise DimensionMismatch(f"{what} has dimension {array.shape[1]}, the collection "
                                f"expects {dim}", {"expected": dim, "got": int(array.shape[1])})
    if not np.isfinite(array).all():
        raise InvalidVector(f"{what} contains NaN or infinite values (or overflows float32)")
    if metric == "cosine" and len(array):
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        np.divide(array, norms, out=array, where=norms > 0)
    return np.ascontiguousarray(array)


def faiss_metric(metric: str) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def bitmap_selector(ids: np.ndarray) -> tuple[faiss.IDSelector, np.ndarray]:
    """An IDSelectorBitmap over ``ids`` plus the bitmap array it points into (keep it alive
    for as long as the selector is used)."""
    size = int(ids.max()) + 1 if len(ids) else 1
    mask = np.zeros(size + (-size % 8), dtype=bool)
    mask[ids] = True
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(bits), bits


class VectorIndex(ABC):
    kind: ClassVar[str]

    def __init__(self, dim: int, metric: str, params: Mapping[str, int] | None = None,
                 *, exact_subset_max: int | None = None) -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}")
        self.dim = int(dim)
        self.metric = metric
        self.params = dict(IndexConfig(self.kind, dict(params or {})).params)
        self.exact_subset_max = exact_subset_max
        self._lock = RWLock()
        self._live = np.zeros(1024, dtype=bool)  # id -> currently searchable
        self._n_live = 0
        self._version = 0  # bumped by every add/remove
        self._live_selector_cache: tuple[int, Any, np.ndarray] | None = None

    # ------------------------------------------------------------------ backend hooks
    @abstractmethod
    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    @abstractmethod
    def _remove(self, ids: np.ndarray) -> None: ...

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Raw FAISS (distances, ids) honouring the selector (which excludes dead ids)."""

    @abstractmethod
    def _reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored (prepared) vectors of live ids, float32 [n, dim]."""

    @abstractmethod
    def _parts(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]: ...

    @abstractmethod
    def _restore(self, state: dict[str, Any], blobs: dict[str, np.ndarray]) -> None:
        """Load the FAISS structures; the live mask is already restored.  Raise ValueError
        if they disagree with it."""

    def _needs_selector(self) -> bool:
        """Whether an unfiltered search must exclude ids (tombstones)."""
        return False

    def needs_rebuild(self) -> str | None:
        """Why :meth:`rebuilt` should be called now (training, compaction...), or None."""
        return None

    def rebuilt(self) -> "VectorIndex":
        """A new index with the same settings holding the live vectors (compacted, trained).
        The caller swaps it in; this one is left untouched and searchable meanwhile."""
        new = type(self)(self.dim, self.metric, self.params,
                         exact_subset_max=self.exact_subset_max)
        with self._lock.read():
            ids = self.live_ids()
            for start in range(0, len(ids), _EXACT_CHUNK):
                chunk = ids[start:start + _EXACT_CHUNK]
                new._add_prepared(chunk, self._reconstruct(chunk))
        return new

    def _extra_stats(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ public API
    @property
    def ntotal(self) -> int:
        """Number of live (searchable) vectors."""
        return self._n_live

    def live_ids(self) -> np.ndarray:
        return np.flatnonzero(self._live).astype(np.int64)

    def contains(self, ids: Any) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        inside = (ids >= 0) & (ids < len(self._live))
        out = np.zeros(len(ids), dtype=bool)
        out[inside] = self._live[ids[inside]]
        return out

    def add(self, ids: Any, vectors: Any) -> None:
        """Add vectors under ids that are not live (HNSW also refuses tombstoned ids until
        compaction).  The collection never reuses ids, so this never happens there."""
        self._add_prepared(np.asarray(ids, dtype=np.int64).reshape(-1),
                           prepare_vectors(vectors, self.dim, self.metric))

    def _add_prepared(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if not len(ids):
            return
        if ids.min() < 0 or ids.max() >= MAX_ID or len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be unique integers in [0, 2**40)")
        with self._lock.write():
            self._grow(int(ids.max()))
            if self._known(ids).any():
                raise ValueError("ids already present in the index (ids are never reused)")
            self._add(ids, vectors)
            self._live[ids] = True
            self._n_live += len(ids)
            self._version += 1

    def _known(self, ids: np.ndarray) -> np.ndarray:
        return self._live[ids]

    def _grow(self, max_id: int) -> None:
        if max_id >= len(self._live):
            grown = np.zeros(max(max_id + 1, 2 * len(self._live)), dtype=bool)
            grown[: len(self._live)] = self._live
            self._live = grown

    def remove(self, ids: Any) -> int:
        """Remove ids (unknown ids are ignored); returns how many were live."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        with self._lock.write():
            ids = ids[self.contains(ids)]
            if len(ids):
                self._remove(ids)
                self._live[ids] = False
                self._n_live -= len(ids)
                self._version += 1
            return len(ids)

    def reconstruct(self, ids: Any) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        with self._lock.read():
            if not self.contains(ids).all():
                raise KeyError("some ids are not in the index")
            return self._reconstruct(ids)

    def search(self, queries: Any, k: int, allowed_ids: Any = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query, restricted to ``allowed_ids`` when given."""
        if k < 1:
            raise ValueError("k must be >= 1")
        q = prepare_vectors(queries, self.dim, self.metric, what="query")
        with self._lock.read():
            allowed = None
            if allowed_ids is not None:
                allowed = np.unique(np.asarray(allowed_ids, dtype=np.int64).reshape(-1))
                allowed = allowed[self.contains(allowed)]
                if len(allowed) <= self._exact_limit():
                    return self._exact(q, k, allowed)
            available = self._n_live if allowed is None else len(allowed)
            if available == 0 or len(q) == 0:
                return _empty(len(q), k)
            keep_alive: Any = None
            selector = None
            if allowed is not None:
                selector, keep_alive = bitmap_selector(allowed)
            elif self._needs_selector():
                selector, keep_alive = self._live_selector()
            with omp_threads(1 if len(q) <= SINGLE_THREAD_MAX_QUERIES else None):
                distances, ids = self._search(q, k, selector)
            del keep_alive
            scores = self._scores(distances, ids)
            short = (ids >= 0).sum(axis=1) < min(k, available)
            if short.any():  # the approximate search came back short: answer those exactly
                pool = allowed if allowed is not None else self.live_ids()
                scores[short], ids[short] = self._exact(q[short], k, pool)
            return scores, ids

    def _live_selector(self) -> tuple[faiss.IDSelector, np.ndarray]:
        """A bitmap selector of the live ids, cached until the next add/remove (selectors are
        read-only during a search, so concurrent searches can share one)."""
        cached = self._live_selector_cache
        if cached is None or cached[0] != self._version:
            bits = np.packbits(self._live, bitorder="little")
            cached = (self._version, faiss.IDSelectorBitmap(bits), bits)
            self._live_selector_cache = cached
        return cached[1], cached[2]

    def _exact_limit(self) -> int:
        if self.exact_subset_max is not None:
            return self.exact_subset_max
        return max(EXACT_SUBSET_MIN, int(EXACT_SUBSET_FRACTION * self._n_live))

    def _scores(self, distances: np.ndarray, ids: np.ndarray) -> np.ndarray:
        scores = distances.astype(np.float32, copy=True)
        if self.metric == "l2":
            scores = 0.0 - np.sqrt(np.maximum(scores, 0.0))  # 0.0 - x: no "-0.0" scores
        scores[ids < 0] = -np.inf
        return scores

    def _exact(self, q: np.ndarray, k: int, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the ids in ``pool`` (ties broken by smaller id)."""
        best_scores = np.full((len(q), 0), -np.inf, dtype=np.float32)
        best_ids = np.full((len(q), 0), -1, dtype=np.int64)
        for start in range(0, len(pool), _EXACT_CHUNK):
            chunk = pool[start:start + _EXACT_CHUNK]
            vectors = self._reconstruct(chunk)
            if self.metric == "l2":
                sq = ((q ** 2).sum(1)[:, None] + (vectors ** 2).sum(1)[None, :]
                      - 2.0 * (q @ vectors.T))
                scores = (0.0 - np.sqrt(np.maximum(sq, 0.0))).astype(np.float32)
            else:
                scores = (q @ vectors.T).astype(np.float32)
            best_scores = np.concatenate([best_scores, scores], axis=1)
            best_ids = np.concatenate([best_ids, np.broadcast_to(chunk, scores.shape)], axis=1)
            if best_scores.shape[1] > k:
                keep = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
                best_scores = np.take_along_axis(best_scores, keep, 1)
                best_ids = np.take_along_axis(best_ids, keep, 1)
        out_scores, out_ids = _empty(len(q), k)
        for row in range(len(q)):
            order = np.lexsort((best_ids[row], -best_scores[row]))[:k]
            out_scores[row, : len(order)] = best_scores[row, order]
            out_ids[row, : len(order)] = best_ids[row, order]
        return out_scores, out_ids

    def stats(self) -> dict[str, Any]:
        with self._lock.read():
            return {"type": self.kind, "metric": self.metric, "dim": self.dim,
                    "params": dict(self.params), "ntotal": self._n_live,
                    **self._extra_stats()}

    # ------------------------------------------------------------------ persistence
    def to_parts(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(header, blobs) describing the whole index; see :func:`index_from_parts`."""
        with self._lock.read():
            state, blobs = self._parts()
            blobs["live"] = self.live_ids()
            header = {"kind": self.kind, "dim": self.dim, "metric": self.metric,
                      "params": self.params, "state": state}
            return header, blobs

    def save(self, path: Path) -> int:
        from .snapshot import write_snapshot
        header, blobs = self.to_parts()
        return write_snapshot(Path(path), {"index": header}, blobs)

    @staticmethod
    def load(path: Path) -> "VectorIndex":
        """Load an index saved with :meth:`save`; raises SnapshotCorrupt."""
        from .snapshot import read_snapshot
        header, blobs = read_snapshot(Path(path))
        return index_from_parts(header["index"], blobs)


def _empty(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64))


def create_index(config: IndexConfig, dim: int, metric: str, **kwargs: Any) -> VectorIndex:
    from .backends import BACKENDS
    return BACKENDS[config.type](dim, metric, config.params, **kwargs)


def index_from_parts(header: Mapping[str, Any], blobs: dict[str, np.ndarray],
                     **kwargs: Any) -> VectorIndex:
    """Rebuild an index from :meth:`VectorIndex.to_parts` output (raises SnapshotCorrupt)."""
    from .backends import BACKENDS
    from .snapshot import SnapshotCorrupt
    try:
        index = BACKENDS[header["kind"]](int(header["dim"]), header["metric"],
                                         header["params"], **kwargs)
        live = np.frombuffer(blobs["live"], dtype=np.int64)
        if len(live):
            index._grow(int(live.max()))
            index._live[live] = True
        index._n_live = len(live)
        index._restore(dict(header["state"]), blobs)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise SnapshotCorrupt(f"index snapshot cannot be loaded: {exc}") from None
    return index

"""The FAISS backends behind :class:`~index.vector_index.VectorIndex`.

* ``flat``: ``IndexIDMap2(IndexFlatIP | IndexFlatL2)``: exact, supports removal.
* ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)`` (M, ef_construction, ef_search).  HNSW cannot
  remove vectors, so removed ids become tombstones: excluded from every search by an
  ``IDSelectorBitmap`` of live ids and reclaimed by compaction (a rebuild without them) once
  they exceed ``COMPACT_RATIO`` of the stored vectors.
* ``ivf``: ``IndexIVFFlat`` (nlist, nprobe).  Until ``TRAIN_FACTOR * nlist`` vectors exist it
  serves exact flat search; then it is trained on the live vectors, and retrained when the
  index has grown ``RETRAIN_GROWTH`` times since.  Removal is native (hash-table direct map).
"""
from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from .vector_index import VectorIndex, faiss_metric

COMPACT_RATIO = 0.2
TRAIN_FACTOR = 39
RETRAIN_GROWTH = 4
MAX_TRAIN_PER_LIST = 256


def _flat_idmap(dim: int, metric: str) -> faiss.IndexIDMap2:
    inner = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
    return faiss.IndexIDMap2(inner)


def _id_map(index: faiss.IndexIDMap2) -> np.ndarray:
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def _check_same(stored: np.ndarray, live: np.ndarray, what: str) -> None:
    if len(stored) != len(live) or not np.array_equal(np.sort(stored), np.sort(live)):
        raise ValueError(f"{what}: stored ids disagree with the live id list")


def _search_params(selector: faiss.IDSelector | None) -> faiss.SearchParameters | None:
    if selector is None:
        return None
    params = faiss.SearchParameters()
    params.sel = selector
    return params


class FlatIndex(VectorIndex):
    kind = "flat"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._index = _flat_idmap(self.dim, self.metric)

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_with_ids(vectors, ids)

    def _remove(self, ids: np.ndarray) -> None:
        self._index.remove_ids(faiss.IDSelectorBatch(ids))

    def _search(self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None
                ) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(queries, k, params=_search_params(selector))

    def _reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self._index.reconstruct_batch(ids)

    def _parts(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {"faiss": faiss.serialize_index(self._index)}

    def _restore(self, state: dict[str, Any], blobs: dict[str, np.ndarray]) -> None:
        self._index = faiss.deserialize_index(np.array(blobs["faiss"]))
        _check_same(_id_map(self._index), self.live_ids(), "flat index")

    def _extra_stats(self) -> dict[str, Any]:
        return {"trained": True, "tombstones": 0, "tombstone_bytes": 0,
                "bytes": int(self._index.ntotal) * (4 * self.dim + 8)}


class HNSWIndex(VectorIndex):
    kind = "hnsw"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._dead = np.zeros(len(self._live), dtype=bool)
        self._n_dead = 0
        self._index = self._new_index()

    def _new_index(self) -> faiss.IndexIDMap2:
        hnsw = faiss.IndexHNSWFlat(self.dim, self.params["m"], faiss_metric(self.metric))
        hnsw.hnsw.efConstruction = self.params["ef_construction"]
        hnsw.hnsw.efSearch = self.params["ef_search"]
        return faiss.IndexIDMap2(hnsw)

    def _grow(self, max_id: int) -> None:
        super()._grow(max_id)
        if len(self._dead) < len(self._live):
            grown = np.zeros(len(self._live), dtype=bool)
            grown[: len(self._dead)] = self._dead
            self._dead = grown

    def _known(self, ids: np.ndarray) -> np.ndarray:
        return self._live[ids] | self._dead[ids]

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_with_ids(vectors, ids)

    def _remove(self, ids: np.ndarray) -> None:
        # Tombstone: the vector stays in the graph (it still routes searches) but the live
        # bitmap excludes it from every result until compaction drops it.
        self._dead[ids] = True
        self._n_dead += len(ids)

    def _needs_selector(self) -> bool:
        return self._n_dead > 0

    def _search(self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None
                ) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self.params["ef_search"], k)
        if selector is not None:
            params.sel = selector
        return self._index.search(queries, k, params=params)

    def _reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self._index.reconstruct_batch(ids)

    def needs_rebuild(self) -> str | None:
        stored = self._n_live + self._n_dead
        if self._n_dead and self._n_dead > COMPACT_RATIO * stored:
            return "compaction"
        return None

    def _bytes_per_vector(self) -> int:
        m = self.params["m"]
        # vector + level-0 links (2M) + expected upper-level links (M / ln M) as int32,
        # offsets/levels, the IDMap2 id and its reverse-map entry: an estimate.
        links = 2 * m + m / math.log(m)
        return int(4 * self.dim + 4 * links + 12 + 8 + 32)

    def _extra_stats(self) -> dict[str, Any]:
        per = self._bytes_per_vector()
        return {"trained": True, "tombstones": self._n_dead, "tombstone_bytes": self._n_dead * per,
                "stored_vectors": self._n_live + self._n_dead,
                "bytes": (self._n_live + self._n_dead) * per}

    def _parts(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        dead = np.flatnonzero(self._dead).astype(np.int64)
        return {}, {"faiss": faiss.serialize_index(self._index), "dead": dead}

    def _restore(self, state: dict[str, Any], blobs: dict[str, np.ndarray]) -> None:
        self._index = faiss.deserialize_index(np.array(blobs["faiss"]))
        dead = np.frombuffer(blobs["dead"], dtype=np.int64)
        if len(dead):
            self._grow(int(dead.max()))
        self._dead[:] = False
        self._dead[dead] = True
        self._n_dead = len(dead)
        live = self.live_ids()
        if (self._live & self._dead).any():
            raise ValueError("hnsw index: an id is both live and dead")
        _check_same(_id_map(self._index), np.concatenate([live, dead]), "hnsw index")
        hnsw = faiss.downcast_index(self._index.index)
        hnsw.hnsw.efSearch = self.params["ef_search"]


class IVFIndex(VectorIndex):
    kind = "ivf"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._index: Any = _flat_idmap(self.dim, self.metric)
        self._trained_at = 0  # live vectors when trained; 0 = not trained (exact flat mode)

    @property
    def trained(self) -> bool:
        return self._trained_at > 0

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_with_ids(vectors, ids)

    def _remove(self, ids: np.ndarray) -> None:
        if self.trained:
            self._index.remove_ids(faiss.IDSelectorArray(ids))  # hash-table direct map
        else:
            self._index.remove_ids(faiss.IDSelectorBatch(ids))

    def _search(self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None
                ) -> tuple[np.ndarray, np.ndarray]:
        if not self.trained:
            return self._index.search(queries, k, params=_search_params(selector))
        params = faiss.SearchParametersIVF()
        params.nprobe = min(self.params["nprobe"], self.params["nlist"])
        if selector is not None:
            params.sel = selector
        return self._index.search(queries, k, params=params)

    def _reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self._index.reconstruct_batch(ids)

    def needs_rebuild(self) -> str | None:
        if not self.trained and self._n_live >= TRAIN_FACTOR * self.params["nlist"]:
            return "training"
        if self.trained and self._n_live >= RETRAIN_GROWTH * self._trained_at:
            return "retraining"
        return None

    def rebuilt(self) -> "IVFIndex":
        new = IVFIndex(self.dim, self.metric, self.params, exact_subset_max=self.exact_subset_max)
        with self._lock.read():
            ids = self.live_ids()
            nlist = self.params["nlist"]
            if len(ids) >= TRAIN_FACTOR * nlist:
                rng = np.random.default_rng(len(ids))
                sample_size = min(len(ids), MAX_TRAIN_PER_LIST * nlist)
                sample = np.sort(rng.choice(ids, size=sample_size, replace=False))
                new._train(self._reconstruct(sample), len(ids))
            for start in range(0, len(ids), 32768):
                chunk = ids[start:start + 32768]
                new._add_prepared(chunk, self._reconstruct(chunk))
        return new

    def _train(self, sample: np.ndarray, n_live: int) -> None:
        nlist = self.params["nlist"]
        metric = faiss_metric(self.metric)
        quantizer = faiss.IndexFlatL2(self.dim) if self.metric == "l2" \
            else faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, metric)
        ivf.cp.seed = 1234
        ivf.train(sample)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        ivf.nprobe = min(self.params["nprobe"], nlist)
        self._index = ivf
        self._quantizer = quantizer  # the IVF index does not own it: keep it alive
        self._trained_at = n_live

    def _extra_stats(self) -> dict[str, Any]:
        return {"trained": self.trained, "trained_at": self._trained_at, "tombstones": 0,
                "tombstone_bytes": 0, "bytes": int(self._index.ntotal) * (4 * self.dim + 16)
                + (self.params["nlist"] * 4 * self.dim if self.trained else 0)}

    def _parts(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"trained_at": self._trained_at}, {"faiss": faiss.serialize_index(self._index)}

    def _restore(self, state: dict[str, Any], blobs: dict[str, np.ndarray]) -> None:
        index = faiss.deserialize_index(np.array(blobs["faiss"]))
        self._trained_at = int(state["trained_at"])
        if self.trained:
            ivf = index  # deserialize_index returns the concrete (owning) type
            if not isinstance(ivf, faiss.IndexIVFFlat) or ivf.ntotal != self._n_live:
                raise ValueError("ivf index: stored vectors disagree with the live id list")
            ivf.nprobe = min(self.params["nprobe"], self.params["nlist"])
            self._index = ivf
        else:
            _check_same(_id_map(index), self.live_ids(), "ivf index (untrained)")
            self._index = index


BACKENDS: dict[str, type[VectorIndex]] = {"flat": FlatIndex, "hnsw": HNSWIndex, "ivf": IVFIndex}

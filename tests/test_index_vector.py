"""FAISS backends behind one interface: metrics, filtered search inside the index, HNSW
tombstones and compaction, IVF training, parameters, persistence.  Real FAISS, random data."""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from index.backends import COMPACT_RATIO, TRAIN_FACTOR, HNSWIndex, IVFIndex
from index.config import IndexConfig
from index.errors import DimensionMismatch, InvalidVector
from index.snapshot import SnapshotCorrupt
from index.vector_index import VectorIndex, create_index

DIM = 24
KINDS = {"flat": {}, "hnsw": {"m": 8, "ef_construction": 40, "ef_search": 32},
         "ivf": {"nlist": 8, "nprobe": 2}}


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.arange(1, n + 1, dtype=np.int64) * 3, rng.standard_normal((n, DIM)).astype("f4")


def build(kind: str, metric: str, n: int = 2000, **kwargs: object) -> tuple[VectorIndex, ...]:
    ids, vecs = data(n)
    index = create_index(IndexConfig(kind, KINDS[kind]), DIM, metric, **kwargs)
    index.add(ids, vecs)
    if index.needs_rebuild():
        index = index.rebuilt()
    return index, ids, vecs


def brute(metric: str, vecs: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int
          ) -> tuple[np.ndarray, np.ndarray]:
    if metric == "cosine":
        vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric == "l2":
        scores = -np.linalg.norm(q[:, None, :] - vecs[None, :, :], axis=2)
    else:
        scores = q @ vecs.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_metrics_and_filtered_search_is_exact(kind: str, metric: str) -> None:
    index, ids, vecs = build(kind, metric)
    q = np.random.default_rng(1).standard_normal((4, DIM)).astype("f4")
    # Unfiltered: scores sorted, higher is better; flat is exact.
    scores, found = index.search(q, 10)
    assert scores.shape == found.shape == (4, 10) and (found > 0).all()
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    if kind == "flat":
        exp_scores, exp_ids = brute(metric, vecs, ids, q, 10)
        np.testing.assert_allclose(scores, exp_scores, rtol=1e-4, atol=1e-4)
    # Filtered to a small subset: exact answer, inside the index.
    allowed = ids[::50]
    scores, found = index.search(q, 10, allowed)
    mask = np.isin(ids, allowed)
    exp_scores, exp_ids = brute(metric, vecs[mask], ids[mask], q, 10)
    np.testing.assert_array_equal(found, exp_ids)
    np.testing.assert_allclose(scores, exp_scores, rtol=1e-4, atol=1e-4)
    # Fewer allowed ids than k: padded with -1 / -inf.
    scores, found = index.search(q[:1], 10, ids[:3])
    assert sorted(found[0, :3]) == list(ids[:3]) and (found[0, 3:] == -1).all()
    assert np.isneginf(scores[0, 3:]).all()
    assert index.search(q[:1], 5, np.array([], dtype=np.int64))[1].tolist() == [[-1] * 5]


@pytest.mark.parametrize("kind", list(KINDS))
def test_large_filters_through_the_selector_still_return_k(kind: str) -> None:
    """With the exact shortcut disabled, FAISS searches with an IDSelector; every query still
    gets k allowed results (short answers are completed exactly)."""
    index, ids, vecs = build(kind, "cosine", exact_subset_max=0)
    q = np.random.default_rng(2).standard_normal((20, DIM)).astype("f4")
    for allowed in (ids[::100], ids[::7], ids[ids % 2 == 0]):
        scores, found = index.search(q, 10, allowed)
        assert (found >= 0).all(), kind
        assert np.isin(found, allowed).all()


def test_l2_score_is_minus_euclidean_distance() -> None:
    index, ids, vecs = build("flat", "l2", n=50)
    scores, found = index.search(vecs[:1] + 0.5, 3)
    distances = np.linalg.norm(vecs[(found[0] // 3) - 1] - (vecs[0] + 0.5), axis=1)
    np.testing.assert_allclose(scores[0], -distances, rtol=1e-4)
    assert index.search(vecs[:1], 1)[0][0, 0] == 0.0  # identical vector: 0, not -0


def test_cosine_normalises_documents_and_queries() -> None:
    index, ids, vecs = build("flat", "cosine", n=100)
    a = index.search(vecs[5:6], 5)
    b = index.search(vecs[5:6] * 1000.0, 5)
    np.testing.assert_array_equal(a[1], b[1])
    assert abs(a[0][0, 0] - 1.0) < 1e-5


@pytest.mark.parametrize("kind", list(KINDS))
def test_removed_ids_never_come_back(kind: str) -> None:
    index, ids, vecs = build(kind, "cosine")
    gone = ids[:300]
    assert index.remove(np.concatenate([gone, [10**9]])) == 300
    assert index.remove(gone) == 0  # idempotent
    assert index.ntotal == len(ids) - 300
    for allowed in (None, ids[:600], ids[:310]):
        _, found = index.search(vecs[:300], 10, allowed)
        assert not np.isin(found, gone).any()
    with pytest.raises(ValueError):
        index.add(ids[-1:], vecs[:1])  # a live id cannot be added twice
    if kind == "hnsw":
        with pytest.raises(ValueError):
            index.add(gone[:1], vecs[:1])  # nor a tombstoned one


def test_hnsw_tombstones_and_compaction() -> None:
    index, ids, vecs = build("hnsw", "cosine")
    assert isinstance(index, HNSWIndex)
    dead = ids[: int(len(ids) * COMPACT_RATIO) - 10]
    index.remove(dead)
    stats = index.stats()
    assert stats["tombstones"] == len(dead) and stats["tombstone_bytes"] > len(dead) * 4 * DIM
    assert stats["stored_vectors"] == len(ids) and index.needs_rebuild() is None
    index.remove(ids[len(dead): len(dead) + 20])
    assert index.needs_rebuild() == "compaction"
    compacted = index.rebuilt()
    after = compacted.stats()
    assert after["tombstones"] == 0 and after["tombstone_bytes"] == 0
    assert after["stored_vectors"] == compacted.ntotal == len(ids) - len(dead) - 20
    assert after["bytes"] < stats["bytes"]
    removed = ids[: len(dead) + 20]
    _, found = compacted.search(vecs[: len(dead) + 20], 10)
    assert not np.isin(found, removed).any()
    # The survivors are all still found (as their own nearest neighbour).
    _, top = compacted.search(vecs[-50:], 1)
    np.testing.assert_array_equal(top[:, 0], ids[-50:])


def test_hnsw_parameters_are_honoured() -> None:
    index = create_index(IndexConfig("hnsw", {"M": 12, "efConstruction": 50, "efSearch": 77}),
                         DIM, "dot")
    inner = faiss.downcast_index(index._index.index)
    assert inner.hnsw.efConstruction == 50 and inner.hnsw.efSearch == 77
    assert inner.hnsw.nb_neighbors(0) == 24 and inner.hnsw.nb_neighbors(1) == 12
    assert index.stats()["params"] == {"m": 12, "ef_construction": 50, "ef_search": 77}


def test_ivf_trains_when_large_enough_and_retrains_on_growth() -> None:
    nlist = 4
    index = create_index(IndexConfig("ivf", {"nlist": nlist, "nprobe": 1}), DIM, "cosine")
    assert isinstance(index, IVFIndex)
    ids, vecs = data(TRAIN_FACTOR * nlist * 5)
    threshold = TRAIN_FACTOR * nlist
    index.add(ids[: threshold - 1], vecs[: threshold - 1])
    assert index.needs_rebuild() is None and not index.stats()["trained"]
    _, exact_ids = index.search(vecs[:5], 3)  # untrained: exact flat search
    np.testing.assert_array_equal(exact_ids[:, 0], ids[:5])
    index.add(ids[threshold - 1: threshold], vecs[threshold - 1: threshold])
    assert index.needs_rebuild() == "training"
    index = index.rebuilt()
    stats = index.stats()
    assert stats["trained"] and stats["trained_at"] == threshold
    assert index._index.nlist == nlist and index._index.nprobe == 1
    index.add(ids[threshold: 4 * threshold - 1], vecs[threshold: 4 * threshold - 1])
    assert index.needs_rebuild() is None
    index.add(ids[4 * threshold - 1: 4 * threshold], vecs[4 * threshold - 1: 4 * threshold])
    assert index.needs_rebuild() == "retraining"
    index = index.rebuilt()
    assert index.stats()["trained_at"] == 4 * threshold and index.ntotal == 4 * threshold


def test_ivf_nprobe_is_honoured() -> None:
    ids, vecs = data(3000, seed=3)
    q = np.random.default_rng(4).standard_normal((50, DIM)).astype("f4")
    recalls = {}
    for nprobe in (1, 16):
        index = create_index(IndexConfig("ivf", {"nlist": 16, "nprobe": nprobe}), DIM, "dot")
        index.add(ids, vecs)
        index = index.rebuilt()
        _, found = index.search(q, 10)
        _, exact = brute("dot", vecs, ids, q, 10)
        recalls[nprobe] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recalls[16] == 1.0 and recalls[1] < 0.9


@pytest.mark.parametrize("kind", list(KINDS))
def test_save_and_load_round_trip(kind: str, tmp_path: Path) -> None:
    index, ids, vecs = build(kind, "l2")
    index.remove(ids[:10])
    q = vecs[:20]
    before = index.search(q, 5)
    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx")
    after = loaded.search(q, 5)
    np.testing.assert_array_equal(before[1], after[1])
    assert loaded.stats() == index.stats()
    loaded.add([10**6], vecs[:1])  # still writable
    data_bytes = (tmp_path / "idx").read_bytes()
    (tmp_path / "idx").write_bytes(data_bytes[: len(data_bytes) // 2])
    with pytest.raises(SnapshotCorrupt):
        VectorIndex.load(tmp_path / "idx")


def test_vector_validation() -> None:
    index = create_index(IndexConfig(), DIM, "cosine")
    with pytest.raises(DimensionMismatch) as info:
        index.add([1], np.zeros((1, DIM + 1)))
    assert info.value.details == {"expected": DIM, "got": DIM + 1}
    for bad in ([[float("nan")] * DIM], [[float("inf")] * DIM], [[1e39] * DIM], [["a"] * DIM]):
        with pytest.raises(InvalidVector):
            index.add([1], bad)
    with pytest.raises(ValueError):
        index.add([1, 1], np.ones((2, DIM)))
    with pytest.raises(ValueError):
        index.add([-1], np.ones((1, DIM)))
    assert index.ntotal == 0

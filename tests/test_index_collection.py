"""Collections end to end (real SQLite + real FAISS): the issue's filter test, the
replace/delete test for every index type, recommend, paging and validation."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from index import (CollectionManager, DimensionMismatch, DocumentIn, DocumentNotFound,
                   InvalidArgument, InvalidFilter, InvalidVector)
from index.collection import Collection

DIM = 32
INDEXES = {"flat": {"type": "flat"},
           "hnsw": {"type": "hnsw", "m": 8, "ef_construction": 40, "ef_search": 64},
           "ivf": {"type": "ivf", "nlist": 64, "nprobe": 8}}


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def upsert_range(c: Collection, vecs: np.ndarray, start: int, stop: int, batch: int = 5000,
                 prefix: str = "d") -> None:
    for lo in range(start, stop, batch):
        hi = min(stop, lo + batch)
        c.upsert([DocumentIn(id=f"{prefix}{i}", text=f"text {i}", vector=vecs[i],
                             metadata={"group": i % 100, "year": 2000 + i % 25,
                                       "tags": ["even" if i % 2 == 0 else "odd"]})
                  for i in range(lo, hi)])


# ------------------------------------------------------------------------ the filter test
N_FILTER = 20_000


@pytest.fixture(scope="module", params=list(INDEXES))
def big(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[Collection, np.ndarray]]:
    manager = CollectionManager(tmp_path_factory.mktemp(request.param))
    collection, _ = manager.create("big", {"dim": DIM, "metric": "cosine",
                                           "index": INDEXES[request.param]})
    vecs = vectors(N_FILTER, seed=11)
    upsert_range(collection, vecs, 0, N_FILTER)
    yield collection, vecs
    manager.close_all()


def test_filter_matching_one_percent_returns_the_exact_top_k(big: tuple[Collection, np.ndarray]
                                                             ) -> None:
    collection, vecs = big
    stats = collection.stats()
    assert stats["count"] == stats["ntotal"] == N_FILTER
    if stats["index_type"] == "ivf":
        assert stats["trained"]
    queries = vectors(20, seed=12)
    members = np.arange(N_FILTER)[np.arange(N_FILTER) % 100 == 42]  # 1%: 200 documents
    assert len(members) == 200
    results = collection.search(queries, top_k=10, filter={"group": 42})
    scores = normalise(queries) @ normalise(vecs[members]).T
    for hits, row in zip(results, scores):
        assert len(hits) == 10
        assert all(h.metadata["group"] == 42 for h in hits)
        order = np.argsort(-row, kind="stable")[:10]
        assert [h.id for h in hits] == [f"d{members[j]}" for j in order]
        np.testing.assert_allclose([h.score for h in hits], row[order], rtol=1e-5, atol=1e-5)


def test_richer_filters_on_the_large_collection(big: tuple[Collection, np.ndarray]) -> None:
    collection, vecs = big
    spec = {"$or": [{"group": {"$in": [3, 4]}}, {"year": {"$gte": 2024}}],
            "tags": {"$ne": "odd"}}
    ids = np.arange(N_FILTER)
    mask = (np.isin(ids % 100, [3, 4]) | (2000 + ids % 25 >= 2024)) & (ids % 2 == 0)
    query = vectors(1, seed=13)
    hits = collection.search(query, top_k=25, filter=spec)[0]
    exact = np.argsort(-(normalise(vecs[mask]) @ normalise(query[0])), kind="stable")[:25]
    assert [h.id for h in hits] == [f"d{ids[mask][j]}" for j in exact]
    # A broad filter (half the collection) still returns top_k, all matching.
    hits = collection.search(vectors(5, seed=14), top_k=50, filter={"tags": "even"})
    assert all(len(row) == 50 and all(h.metadata["tags"] == ["even"] for h in row)
               for row in hits)
    assert collection.search(query, top_k=10, filter={"group": 1000}) == [[]]


# ------------------------------------------------------------------------ replace / delete
def check_no_stale_hits(c: Collection, stale_queries: np.ndarray, deleted: set[str]) -> None:
    """No deleted id ever appears, and every hit's score is the similarity with the
    document's *current* vector (so a replaced document is never found by its old vector)."""
    for filter_ in (None, {"tags": "even"}, {"group": {"$lt": 50}}):
        batch = c.search(stale_queries, top_k=20, filter=filter_)
        assert len(batch) == len(stale_queries)
        for q, hits in zip(stale_queries, batch):
            assert not deleted & {h.id for h in hits}
            if hits:
                current = normalise(c.vector_of([h.id for h in hits]))
                np.testing.assert_allclose([h.score for h in hits], current @ normalise(q),
                                           rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", list(INDEXES))
def test_replaced_or_deleted_documents_never_come_back(kind: str, tmp_path: Path) -> None:
    index = dict(INDEXES[kind])
    if kind == "ivf":
        index.update(nlist=4, nprobe=2)  # trains at 156 documents
    manager = CollectionManager(tmp_path)
    c, _ = manager.create("rd", {"dim": DIM, "index": index})
    old = vectors(600, seed=21)
    upsert_range(c, old, 0, 600, batch=200)
    new = vectors(600, seed=22)
    # Replace d0..d99 (new vectors, metadata moved to group 99) and delete d100..d149.
    result = c.upsert([DocumentIn(id=f"d{i}", text="new", vector=new[i],
                                  metadata={"group": 99, "tags": ["replaced"]})
                       for i in range(100)])
    assert result.ids == [f"d{i}" for i in range(100)]
    assert c.delete([f"d{i}" for i in range(100, 150)]).deleted == [f"d{i}" for i in
                                                                    range(100, 150)]
    deleted = {f"d{i}" for i in range(100, 150)}
    stale = old[:150]
    check_no_stale_hits(c, stale, deleted)
    # The old metadata of a replaced document no longer matches.
    hits = c.search(old[:5], top_k=600, filter={"group": {"$lt": 5}})
    assert all(int(h.id[1:]) >= 150 for row in hits for h in row) and hits[0]
    # Delete by filter enough documents to trigger HNSW compaction.
    removed = c.delete_by_filter({"group": {"$gte": 60, "$lt": 99}})
    deleted |= set(removed.deleted)
    assert len(removed.deleted) > 150
    stats = c.stats()
    assert stats["count"] == stats["ntotal"] == 600 - 50 - len(removed.deleted)
    if kind == "hnsw":
        assert stats["tombstones"] < 0.2 * (stats["ntotal"] + stats["tombstones"])
    if kind == "ivf":
        assert stats["trained"]
    check_no_stale_hits(c, old[:600:7], deleted)
    manager.close_all()
    manager = CollectionManager(tmp_path)
    c = manager.get("rd")
    assert c.count() == stats["count"]
    check_no_stale_hits(c, old[:600:7], deleted)
    # A re-upsert after reopening also replaces cleanly.
    c.upsert([DocumentIn(id="d0", text="again", vector=old[0], metadata={})])
    hits = c.search(new[0], top_k=5)[0]
    assert all(h.id != "d0" or abs(h.score - float(normalise(old[0]) @ normalise(new[0])))
               < 1e-4 for h in hits)
    manager.close_all()


def test_hnsw_compaction_reclaims_and_is_reported(tmp_path: Path) -> None:
    manager = CollectionManager(tmp_path)
    c, _ = manager.create("h", {"dim": DIM, "index": INDEXES["hnsw"]})
    vecs = vectors(500, seed=5)
    upsert_range(c, vecs, 0, 500, batch=500)
    c.delete([f"d{i}" for i in range(90)])
    stats = c.stats()
    assert stats["tombstones"] == 90 and stats["tombstone_bytes"] > 0
    c.delete([f"d{i}" for i in range(90, 110)])  # 110/500 > 20%: compacted
    stats = c.stats()
    assert stats["tombstones"] == 0 and stats["ntotal"] == 390 and stats["index"][
        "stored_vectors"] == 390
    manager.close_all()


# ------------------------------------------------------------------------ API behaviour
@pytest.fixture()
def small(tmp_path: Path) -> Iterator[Collection]:
    manager = CollectionManager(tmp_path)
    c, _ = manager.create("s", {"dim": DIM, "metric": "cosine", "model": "minilm"})
    upsert_range(c, vectors(300, seed=1), 0, 300, batch=300)
    yield c
    manager.close_all()


def test_upsert_get_list_and_versions(small: Collection) -> None:
    v0 = small.write_version
    result = small.upsert([DocumentIn(text="no id", vector=vectors(1, 2)[0],
                                      metadata={"k": "ü"})])
    generated = result.ids[0]
    assert len(generated) == 32 and result.write_version > v0 == 300
    doc = small.get_document(generated, include_vector=True)
    assert doc.text == "no id" and doc.metadata == {"k": "ü"} and doc.vector.shape == (DIM,)
    assert [d.id for d in small.get(["d5", "missing", "d1"])] == ["d5", "d1"]
    with pytest.raises(DocumentNotFound):
        small.get_document("missing")
    seen, cursor = [], None
    while True:
        page = small.list_documents(cursor, limit=70, include_text=False)
        seen += [d.id for d in page.documents]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == len(set(seen)) == 301
    with pytest.raises(InvalidArgument):
        small.list_documents("garbage!", 10)
    # A repeated id in one batch: the last occurrence wins.
    small.upsert([DocumentIn(id="dup", text="first", vector=vectors(1, 3)[0]),
                  DocumentIn(id="dup", text="second", vector=vectors(1, 4)[0])])
    assert small.get_document("dup").text == "second" and small.count() == 302


def test_min_score_include_flags_and_batch(small: Collection) -> None:
    vecs = vectors(300, seed=1)
    results = small.search(vecs[:3], top_k=5, min_score=0.99, include_text=False,
                           include_metadata=False)
    assert [[h.id for h in row] for row in results] == [["d0"], ["d1"], ["d2"]]
    assert results[0][0].text is None and results[0][0].metadata is None
    with pytest.raises(InvalidArgument):
        small.search(vecs[0], top_k=0)
    with pytest.raises(InvalidArgument):
        small.search(vecs[0], top_k=10_000)
    with pytest.raises(DimensionMismatch):
        small.search(np.zeros(DIM + 1), top_k=1)
    with pytest.raises(InvalidVector):
        small.search([float("nan")] * DIM)
    with pytest.raises(InvalidFilter):
        small.search(vecs[0], filter={"a": {"$regex": "x"}})


def test_recommend(small: Collection) -> None:
    vecs = normalise(vectors(300, seed=1))
    hits = small.recommend(["d1", "d2"], ["d3"], top_k=5, include_text=False)
    assert len(hits) == 5 and not {"d1", "d2", "d3"} & {h.id for h in hits}
    query = normalise((vecs[1] + vecs[2]) / 2 - 0.5 * vecs[3])
    scores = vecs @ query
    scores[[1, 2, 3]] = -np.inf
    assert [h.id for h in hits] == [f"d{i}" for i in np.argsort(-scores)[:5]]
    filtered = small.recommend(["d1"], top_k=3, filter={"tags": "even"})
    assert len(filtered) == 3 and all(h.metadata["tags"] == ["even"] for h in filtered)
    with pytest.raises(DocumentNotFound) as info:
        small.recommend(["d1", "nope"])
    assert info.value.details["missing"] == ["nope"]
    with pytest.raises(InvalidArgument):
        small.recommend([])
    with pytest.raises(InvalidArgument):
        small.recommend(["d1"], ["d1"], negative_weight=1.0)  # cancels out


def test_document_validation(small: Collection) -> None:
    v = vectors(1, 9)[0]
    bad = [DocumentIn(id="", text="x", vector=v),
           DocumentIn(id="a" * 257, text="x", vector=v),
           DocumentIn(id="x", text=None, vector=v),  # type: ignore[arg-type]
           DocumentIn(id="x", text="x", vector=v, metadata=[1]),  # type: ignore[arg-type]
           DocumentIn(id="x", text="x", vector=v, metadata={"a": float("nan")}),
           DocumentIn(id="x", text="x", vector=v, metadata={"a": {1: 2}}),
           DocumentIn(id="x", text="x", vector=v, metadata={"a": object()})]
    for doc in bad:
        with pytest.raises(InvalidArgument):
            small.upsert([doc])
    with pytest.raises(DimensionMismatch):
        small.upsert([DocumentIn(id="x", text="x", vector=np.zeros(DIM - 1))])
    for vector in ([float("nan")] * DIM, [float("inf")] * DIM, np.zeros(DIM)):
        with pytest.raises(InvalidVector):
            small.upsert([DocumentIn(id="x", text="x", vector=vector)])
    # A bad document anywhere rejects the whole batch.
    with pytest.raises(InvalidVector):
        small.upsert([DocumentIn(id="ok", text="x", vector=v),
                      DocumentIn(id="x", text="x", vector=[float("nan")] * DIM)])
    assert small.get(["ok", "x"]) == [] and small.count() == 300
    with pytest.raises(InvalidFilter, match="empty filter would delete every document"):
        small.delete_by_filter({})

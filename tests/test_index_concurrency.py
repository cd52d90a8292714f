"""Many writers and readers at once on one collection: no exceptions, no lost updates, no torn
reads (a search never sees half a batch, nor a vector from one write with the row of another).
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from index import CollectionManager, DocumentIn

DIM = 8
BATCH = 12
WRITERS = 3
BATCHES_PER_WRITER = 15
REPLACED = 6  # documents r0..r5 rewritten over and over


def one_hot(j: int, scale: float) -> np.ndarray:
    v = np.full(DIM, 1e-3, dtype=np.float32)
    v[j] = scale
    return v


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_concurrent_writers_and_readers(kind: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    index = {"flat": {"type": "flat"}, "hnsw": {"type": "hnsw", "m": 8, "ef_construction": 32},
             "ivf": {"type": "ivf", "nlist": 2, "nprobe": 2}}[kind]
    manager = CollectionManager(tmp_path)
    c, _ = manager.create("cc", {"dim": DIM, "metric": "dot", "index": index})
    c.upsert([DocumentIn(id=f"r{j}", text="", vector=one_hot(j, 1.0), metadata={"version": 0})
              for j in range(REPLACED)])
    errors: list[BaseException] = []
    stop = threading.Event()
    rng_lock = threading.Lock()
    rng = np.random.default_rng(0)
    rounds = [0]

    def guarded(fn):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)
                stop.set()
        return run

    def writer(w: int) -> None:
        for b in range(BATCHES_PER_WRITER):
            if stop.is_set():
                return
            with rng_lock:
                vecs = rng.standard_normal((BATCH, DIM)).astype(np.float32)
            tag = f"w{w}b{b}"
            c.upsert([DocumentIn(id=f"{tag}-{i}", text=tag, vector=vecs[i],
                                 metadata={"batch": tag}) for i in range(BATCH)])
            version = w * 1000 + b + 1  # the vector's scale (version + 1) encodes the version
            c.upsert([DocumentIn(id=f"r{j}", text="", vector=one_hot(j, version + 1.0),
                                 metadata={"version": version}) for j in range(REPLACED)])
            if b % 3 == 2:  # churn: short-lived documents (tombstones in HNSW)
                churn = [f"churn-{tag}-{i}" for i in range(BATCH)]
                c.upsert([DocumentIn(id=i, text="", vector=v, metadata={"churn": True})
                          for i, v in zip(churn, vecs)])
                c.delete(churn)

    def reader() -> None:
        q = np.random.default_rng(1).standard_normal((2, DIM)).astype(np.float32)
        while not stop.is_set():
            # A whole batch or nothing of it.
            tag = f"w{np.random.randint(WRITERS)}b{np.random.randint(BATCHES_PER_WRITER)}"
            hits = c.search(q, top_k=BATCH + 5, filter={"batch": tag})
            for row in hits:
                assert len(row) in (0, BATCH), (tag, len(row))
                assert all(h.metadata == {"batch": tag} for h in row)
                assert [h.score for h in row] == sorted((h.score for h in row), reverse=True)
            # The vector that scored a hit comes from the same write as its metadata.
            for j in range(REPLACED):
                row = c.search(one_hot(j, 1.0), top_k=1, filter={"version": {"$exists": True}})
                hit = row[0][0]
                assert hit.id == f"r{j}"
                expected = hit.metadata["version"] + 1.0
                assert abs(hit.score - expected) < 1e-3 * expected, hit
            stats = c.stats()
            assert stats["count"] == stats["ntotal"]
            rounds[0] += 1

    threads = [threading.Thread(target=guarded(lambda w=w: writer(w))) for w in range(WRITERS)]
    readers = [threading.Thread(target=guarded(reader)) for _ in range(3)]
    for t in threads + readers:
        t.start()
    deadline = time.monotonic() + 120
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    stop.set()
    for t in readers:
        t.join(timeout=30)
    assert not errors, errors[0]
    assert not any(t.is_alive() for t in threads + readers)
    assert rounds[0] >= 3  # the readers really ran alongside the writers
    expected = REPLACED + WRITERS * BATCHES_PER_WRITER * BATCH
    stats = c.stats()
    assert c.count() == stats["ntotal"] == expected
    if kind == "ivf":
        assert stats["trained"]
    manager.close_all()
    manager = CollectionManager(tmp_path)
    assert manager.get("cc").count() == expected
    manager.close_all()

"""DocumentStore on real SQLite: sequence numbers, replacement, the change log, paging,
all-or-nothing batches and the mapping of storage faults to StorageError statuses."""
from __future__ import annotations

import errno
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from index.errors import InvalidArgument, StorageError, storage_error_from
from index.filters import parse_filter
from index.store import DocumentStore, NewDocument

DIM = 4


def doc(ext_id: str, value: float = 1.0, **metadata: object) -> NewDocument:
    return NewDocument(ext_id, f"text {ext_id}", dict(metadata), np.full(DIM, value, np.float32))


@pytest.fixture()
def store(tmp_path: Path) -> DocumentStore:
    s = DocumentStore(tmp_path / "docs.sqlite3", DIM)
    yield s
    s.close()


def test_pragmas(store: DocumentStore) -> None:
    conn = store._writer
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_seq_iids_replacement_and_change_log(store: DocumentStore) -> None:
    first = store.upsert([doc("a"), doc("b"), doc("c")])
    assert first.seq == 3 and first.added_iids.tolist() == [1, 2, 3]
    assert first.removed_iids.tolist() == []
    replaced = store.upsert([doc("b", 2.0, v=2), doc("d")])
    # The old row of "b" is deleted (seq 4), then b and d are inserted with new iids.
    assert replaced.removed_iids.tolist() == [2] and replaced.removed_ext_ids == ["b"]
    assert replaced.added_iids.tolist() == [4, 5] and replaced.seq == 6
    deleted = store.delete(["a", "zzz", "a"])
    assert deleted.removed_ext_ids == ["a"] and deleted.seq == 7
    assert store.delete(["zzz"]).seq == 7  # nothing deleted: no new seq
    assert store.last_seq == 7 and store.count() == 3
    b = store.get(["b"], vector=True)[0]
    assert (b.iid, b.seq, b.metadata) == (4, 5, {"v": 2}) and b.vector.tolist() == [2.0] * DIM

    changes = store.changes_since(3)
    assert changes.upto_seq == 7
    assert sorted(changes.removed_iids.tolist()) == [1, 2]
    assert changes.added_iids.tolist() == [4, 5] and changes.added_vectors.shape == (2, DIM)
    everything = store.changes_since(0)
    assert everything.added_iids.tolist() == [3, 4, 5]  # rows alive now
    assert store.changes_since(7).added_iids.size == 0

    store.prune_deletions(6)
    assert store.pruned_upto == 6 and store.changes_since(6).removed_iids.tolist() == [1]
    # Internal ids are never reused, even after deletes and a reopen.
    path = store.path
    store.close()
    reopened = DocumentStore(path, DIM)
    assert reopened.upsert([doc("a")]).added_iids.tolist() == [6]
    reopened.close()


def test_delete_where_and_matching_iids(store: DocumentStore) -> None:
    store.upsert([doc(f"x{i}", float(i), n=i, even=i % 2 == 0) for i in range(10)])
    sql, params = parse_filter({"even": True, "n": {"$gte": 4}}).to_sql()
    assert store.matching_iids(sql, params).tolist() == [5, 7, 9]
    result = store.delete_where(sql, params)
    assert sorted(result.removed_ext_ids) == ["x4", "x6", "x8"] and result.seq == 13
    assert store.matching_iids(sql, params).size == 0 and store.count() == 7


def test_paging_with_opaque_cursor(store: DocumentStore) -> None:
    store.upsert([doc(f"p{i:02d}") for i in range(25)])
    ids, cursor = [], None
    while True:
        page, cursor = store.list(cursor, 10, text=False, metadata=False)
        ids += [d.id for d in page]
        assert all(d.text is None and d.metadata is None for d in page)
        if cursor is None:
            break
        assert "p" not in cursor  # opaque
    assert ids == [f"p{i:02d}" for i in range(25)]
    for bad in ("%%%", "djI6MQ", "eA"):  # not base64, another version, no separator
        with pytest.raises(InvalidArgument):
            store.list(bad, 10)
    with pytest.raises(InvalidArgument):
        store.list(None, 0)


def test_a_full_disk_rejects_the_whole_batch_with_507(store: DocumentStore) -> None:
    store.upsert([doc("before")])
    pages = store._writer.execute("PRAGMA page_count").fetchone()[0]
    store._writer.execute(f"PRAGMA max_page_count = {pages + 2}")  # a real SQLITE_FULL
    big = [NewDocument(f"big{i}", "x" * 2000, {"i": i}, np.ones(DIM, np.float32))
           for i in range(200)]
    with pytest.raises(StorageError) as info:
        store.upsert(big)
    assert info.value.http_status == 507 and "disk is full" in info.value.message
    assert store.count() == 1 and store.get(["big0", "big199"]) == []
    assert store.last_seq == 1
    store._writer.execute("PRAGMA max_page_count = 1073741823")
    assert store.upsert(big[:3]).seq == 4  # the store keeps working afterwards


def test_read_only_and_unopenable_storage_give_503(store: DocumentStore, tmp_path: Path
                                                   ) -> None:
    store._writer.execute("PRAGMA query_only = 1")  # writes now fail with SQLITE_READONLY
    with pytest.raises(StorageError) as info:
        store.upsert([doc("a")])
    assert info.value.http_status == 503 and "read-only" in info.value.message
    store._writer.execute("PRAGMA query_only = 0")
    with pytest.raises(StorageError) as info:
        DocumentStore(tmp_path / "no" / "such" / "dir" / "x.sqlite3", DIM)
    assert info.value.http_status == 503 and "cannot be opened" in info.value.message
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError) as info:
        DocumentStore(garbage, DIM)
    assert info.value.http_status == 503
    with pytest.raises(StorageError, match="does not match"):
        DocumentStore(store.path, DIM + 1)


def test_os_error_mapping() -> None:
    assert storage_error_from(OSError(errno.ENOSPC, "No space"), "x").http_status == 507
    assert storage_error_from(OSError(errno.EROFS, "Read-only"), "x").http_status == 503
    busy = sqlite3.OperationalError("database is locked")
    assert storage_error_from(busy, "x").http_status == 503


def test_readers_do_not_wait_for_the_writer(store: DocumentStore) -> None:
    store.upsert([doc("a")])
    store._write_lock.acquire()  # a writer in the middle of a long transaction
    store._writer.execute("BEGIN IMMEDIATE")
    store._writer.execute("DELETE FROM documents")
    try:
        seen: list[int] = []
        reader = threading.Thread(target=lambda: seen.append(store.count()))
        started = time.monotonic()
        reader.start()
        reader.join(timeout=5)
        assert seen == [1] and time.monotonic() - started < 2  # the committed state
    finally:
        store._writer.execute("ROLLBACK")
        store._write_lock.release()


def test_read_connections_are_pooled_and_bounded(store: DocumentStore) -> None:
    """Reads from many threads reuse a few connections: the number kept open (and the SQLite
    page cache each holds) does not grow with the number of threads that ever read."""
    store.upsert([doc("a"), doc("b")])
    barrier = threading.Barrier(16)
    counts: list[int] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(20):
                counts.append(store.count())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for _round in range(3):  # 48 distinct threads in all
        threads = [threading.Thread(target=reader) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert not errors and counts == [2] * (48 * 20)
    assert 1 <= len(store._idle_readers) <= 4
    conn = store._idle_readers[0]
    assert not conn.in_transaction
    assert conn.execute("PRAGMA query_only").fetchone()[0] == 1
    # a read that fails inside its transaction hands back a clean connection
    with pytest.raises(StorageError):
        store._read("boom", lambda c: c.execute("SELECT * FROM no_such_table"))
    assert all(not c.in_transaction for c in store._idle_readers)
    store.close()
    assert store._idle_readers == []
    with pytest.raises(StorageError):
        store.count()


def test_duplicate_ids_and_bad_metadata_are_rejected(store: DocumentStore) -> None:
    with pytest.raises(InvalidArgument):
        store.upsert([doc("a"), doc("a")])
    with pytest.raises(InvalidArgument):
        store.upsert([NewDocument("a", "", {"x": float("nan")}, np.ones(DIM, np.float32))])
    with pytest.raises(InvalidArgument):
        store.upsert([NewDocument("a", "", {}, np.ones(DIM + 1, np.float32))])
    assert store.count() == 0 and store.last_seq == 0

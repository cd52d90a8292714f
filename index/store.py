"""DocumentStore: the durable source of truth of one collection (one SQLite file).

Every document row holds an internal integer id (``iid``, also the FAISS id), the external
string id, text, metadata JSON, the float32 vector and the ``seq`` of the write that created
it.  Internal ids are never reused: replacing a document deletes the old row and inserts a new
one with a fresh ``iid``, so an index can never confuse the old vector with the new one.
Every delete advances ``seq`` too and is recorded in ``deletions``, so an index snapshot taken
at seq S is brought up to date by removing the iids deleted after S and adding the rows with
seq > S (:meth:`changes_since`).

Durability: WAL journal, ``synchronous=FULL`` and one transaction per batch, so when a write
method returns, the batch is on disk, all of it or none of it.  One writer at a time (a lock);
readers take a pooled read-only connection (at most 4 kept idle) and never wait for the writer (WAL).
"""
from __future__ import annotations

import base64
import binascii
import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

from .errors import InvalidArgument, StorageError, storage_error_from
from .filters import register_sql_functions

SCHEMA_VERSION = 1
_CHUNK = 500  # ids per IN (...) list
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS documents (
    iid      INTEGER PRIMARY KEY,
    ext_id   TEXT NOT NULL UNIQUE,
    text     TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector   BLOB NOT NULL,
    seq      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_seq ON documents (seq);
CREATE TABLE IF NOT EXISTS deletions (seq INTEGER PRIMARY KEY, iid INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class NewDocument:
    id: str
    text: str
    metadata: dict[str, Any]
    vector: np.ndarray  # float32 [dim]


@dataclass(frozen=True)
class StoredDocument:
    iid: int
    id: str
    seq: int
    text: str | None = None
    metadata: dict[str, Any] | None = None
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class WriteResult:
    """What a write changed: ``added_iids`` (in input order) and ``removed_iids`` (old rows
    replaced or deleted), and the store's ``seq`` after the commit."""

    seq: int
    added_iids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    removed_iids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    removed_ext_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ChangeSet:
    """Everything needed to bring an index at ``since_seq`` up to ``upto_seq``."""

    since_seq: int
    upto_seq: int
    removed_iids: np.ndarray
    added_iids: np.ndarray
    added_vectors: np.ndarray


def encode_cursor(after_iid: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{after_iid}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, value = raw.split(":", 1)
        if tag != "v1" or not value.isdigit():
            raise ValueError(raw)
        return int(value)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidArgument("invalid cursor: pass back the next_cursor of a previous page",
                              {"cursor": cursor[:100]}) from None


_MAX_IDLE_READERS = 4


def _chunks(items: Sequence[_T], size: int = _CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class DocumentStore:
    def __init__(self, path: Path, dim: int, *, create: bool = True) -> None:
        self.path = Path(path)
        self.dim = int(dim)
        self._write_lock = threading.Lock()
        # Idle read-only connections, reused by whichever thread reads next.  At most
        # _MAX_IDLE_READERS stay open, so the page caches they hold are bounded however many
        # threads the server's pool has used (one connection per thread grew with the pool).
        self._idle_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        if not create and not self.path.exists():
            raise StorageError("document store file is missing", {"path": str(self.path)})
        try:
            self._writer = self._connect(read_only=False)
            self._writer.executescript(_SCHEMA)
            self._init_meta()
        except sqlite3.Error as exc:
            raise storage_error_from(exc, "open document store") from exc

    # ------------------------------------------------------------------ connections
    def _connect(self, read_only: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=10.0)
        if not read_only:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        if read_only:
            conn.execute("PRAGMA query_only=1")
        register_sql_functions(conn)
        return conn

    def _acquire_reader(self) -> sqlite3.Connection:
        if self._closed:
            raise StorageError("the document store is closed", {"path": str(self.path)})
        with self._readers_lock:
            if self._idle_readers:
                return self._idle_readers.pop()
        return self._connect(read_only=True)

    def _release_reader(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:  # a failed COMMIT: never hand out a connection mid-transaction
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                conn.close()
                return
        with self._readers_lock:
            if not self._closed and len(self._idle_readers) < _MAX_IDLE_READERS:
                self._idle_readers.append(conn)
                return
        conn.close()

    def _read(self, action: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` inside one read transaction (a consistent snapshot)."""
        try:
            conn = self._acquire_reader()
        except sqlite3.Error as exc:
            raise storage_error_from(exc, action) from exc
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise storage_error_from(exc, action) from exc
        finally:
            self._release_reader(conn)

    def _write(self, action: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` in one IMMEDIATE transaction: committed entirely or not at all."""
        with self._write_lock:
            if self._closed:
                raise StorageError("the document store is closed", {"path": str(self.path)})
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                    return result
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise storage_error_from(exc, action) from exc

    def _init_meta(self) -> None:
        def init(conn: sqlite3.Connection) -> None:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
                    ("schema_version", SCHEMA_VERSION), ("dim", self.dim), ("last_seq", 0),
                    ("next_iid", 1), ("pruned_upto", 0)])
                return
            if int(meta["schema_version"]) != SCHEMA_VERSION or int(meta["dim"]) != self.dim:
                raise StorageError("document store does not match the collection "
                                   f"(dim {meta['dim']}, schema {meta['schema_version']})",
                                   {"path": str(self.path)})
        self._write("open document store", init)

    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str) -> int:
        return int(conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))

    # ------------------------------------------------------------------ writes
    def upsert(self, docs: Sequence[NewDocument]) -> WriteResult:
        """Insert or replace a batch in one transaction.  External ids must be unique within
        the batch.  Replaced rows get new iids; the old iids are reported as removed."""
        if len({d.id for d in docs}) != len(docs):
            raise InvalidArgument("duplicate document ids in one upsert batch")
        rows = []
        for doc in docs:
            vector = np.asarray(doc.vector, dtype="<f4").reshape(-1)
            if vector.shape[0] != self.dim:
                raise InvalidArgument(f"vector of {doc.id!r} has dimension {vector.shape[0]}",
                                      {"expected": self.dim})
            try:
                meta = json.dumps(doc.metadata, ensure_ascii=False, allow_nan=False,
                                  separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                raise InvalidArgument(f"metadata of {doc.id!r} is not valid JSON: {exc}",
                                      {"id": doc.id}) from None
            rows.append((doc.id, doc.text, meta, vector.tobytes()))

        def write(conn: sqlite3.Connection) -> WriteResult:
            seq = self._meta(conn, "last_seq")
            next_iid = self._meta(conn, "next_iid")
            removed = self._delete_ext_ids(conn, [r[0] for r in rows])
            deletions = [(seq + i + 1, iid) for i, (iid, _) in enumerate(removed)]
            seq += len(deletions)
            inserts = [(next_iid + i, ext_id, text, meta, blob, seq + i + 1)
                       for i, (ext_id, text, meta, blob) in enumerate(rows)]
            conn.executemany("INSERT INTO deletions (seq, iid) VALUES (?, ?)", deletions)
            conn.executemany("INSERT INTO documents (iid, ext_id, text, metadata, vector, seq) "
                             "VALUES (?, ?, ?, ?, ?, ?)", inserts)
            seq += len(inserts)
            self._set_meta(conn, "last_seq", seq)
            self._set_meta(conn, "next_iid", next_iid + len(inserts))
            return WriteResult(seq, np.arange(next_iid, next_iid + len(inserts), dtype=np.int64),
                               np.array([iid for iid, _ in removed], dtype=np.int64),
                               [ext for _, ext in removed])
        return self._write("upsert documents", write)

    @staticmethod
    def _delete_ext_ids(conn: sqlite3.Connection, ext_ids: Sequence[str]) -> list[tuple[int, str]]:
        removed: list[tuple[int, str]] = []
        for chunk in _chunks(list(ext_ids)):
            marks = ",".join("?" * len(chunk))
            removed += conn.execute(f"SELECT iid, ext_id FROM documents WHERE ext_id IN ({marks})",
                                    list(chunk)).fetchall()
        conn.executemany("DELETE FROM documents WHERE iid = ?", [(iid,) for iid, _ in removed])
        return removed

    def _record_deletions(self, conn: sqlite3.Connection, removed: list[tuple[int, str]]
                          ) -> WriteResult:
        seq = self._meta(conn, "last_seq")
        conn.executemany("INSERT INTO deletions (seq, iid) VALUES (?, ?)",
                         [(seq + i + 1, iid) for i, (iid, _) in enumerate(removed)])
        seq += len(removed)
        self._set_meta(conn, "last_seq", seq)
        return WriteResult(seq, removed_iids=np.array([i for i, _ in removed], dtype=np.int64),
                           removed_ext_ids=[e for _, e in removed])

    def delete(self, ext_ids: Sequence[str]) -> WriteResult:
        """Delete documents by external id (unknown ids are ignored) in one transaction."""
        unique = list(dict.fromkeys(ext_ids))
        return self._write("delete documents",
                           lambda conn: self._record_deletions(
                               conn, self._delete_ext_ids(conn, unique)))

    def delete_where(self, where_sql: str, params: Sequence[Any]) -> WriteResult:
        """Delete every document whose row satisfies ``where_sql`` (from a compiled filter)."""
        def write(conn: sqlite3.Connection) -> WriteResult:
            removed = conn.execute(f"SELECT iid, ext_id FROM documents WHERE {where_sql}",
                                   list(params)).fetchall()
            conn.executemany("DELETE FROM documents WHERE iid = ?", [(i,) for i, _ in removed])
            return self._record_deletions(conn, removed)
        return self._write("delete documents by filter", write)

    def prune_deletions(self, upto_seq: int) -> None:
        """Forget deletion records at or below ``upto_seq`` (call once an index snapshot that
        includes them is durable).  Snapshots older than that can no longer be replayed."""
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM deletions WHERE seq <= ?", (upto_seq,))
            if upto_seq > self._meta(conn, "pruned_upto"):
                self._set_meta(conn, "pruned_upto", upto_seq)
        self._write("prune deletion log", write)

    # ------------------------------------------------------------------ reads
    def _decode(self, blob: bytes) -> np.ndarray:
        if len(blob) != 4 * self.dim:
            raise StorageError("stored vector has the wrong size", {"bytes": len(blob)}, 503)
        return np.frombuffer(blob, dtype="<f4").astype(np.float32)

    def _row(self, row: tuple[Any, ...], text: bool, metadata: bool, vector: bool
             ) -> StoredDocument:
        iid, ext_id, seq, txt, meta, blob = row
        return StoredDocument(int(iid), ext_id, int(seq), txt if text else None,
                              json.loads(meta) if metadata else None,
                              self._decode(blob) if vector else None)

    def _select(self, text: bool, metadata: bool, vector: bool) -> str:
        cols = ["iid", "ext_id", "seq", "text" if text else "NULL",
                "metadata" if metadata else "NULL", "vector" if vector else "NULL"]
        return f"SELECT {', '.join(cols)} FROM documents"

    def get(self, ext_ids: Sequence[str], *, text: bool = True, metadata: bool = True,
            vector: bool = False) -> list[StoredDocument]:
        """Documents by external id, in the requested order; unknown ids are skipped."""
        def read(conn: sqlite3.Connection) -> list[StoredDocument]:
            found: dict[str, StoredDocument] = {}
            for chunk in _chunks(list(dict.fromkeys(ext_ids))):
                sql = f"{self._select(text, metadata, vector)} WHERE ext_id IN " \
                      f"({','.join('?' * len(chunk))})"
                for row in conn.execute(sql, list(chunk)):
                    found[row[1]] = self._row(row, text, metadata, vector)
            return [found[e] for e in ext_ids if e in found]
        return self._read("read documents", read)

    def get_by_iids(self, iids: Sequence[int], *, text: bool = True, metadata: bool = True,
                    vector: bool = False) -> dict[int, StoredDocument]:
        def read(conn: sqlite3.Connection) -> dict[int, StoredDocument]:
            out: dict[int, StoredDocument] = {}
            for chunk in _chunks([int(i) for i in iids]):
                sql = f"{self._select(text, metadata, vector)} WHERE iid IN " \
                      f"({','.join('?' * len(chunk))})"
                for row in conn.execute(sql, chunk):
                    out[int(row[0])] = self._row(row, text, metadata, vector)
            return out
        return self._read("read documents", read)

    def iids_of(self, ext_ids: Sequence[str]) -> dict[str, int]:
        return {d.id: d.iid for d in self.get(ext_ids, text=False, metadata=False)}

    def matching_iids(self, where_sql: str, params: Sequence[Any]) -> np.ndarray:
        """Sorted iids of the documents satisfying a compiled filter's WHERE clause."""
        def read(conn: sqlite3.Connection) -> np.ndarray:
            rows = conn.execute(f"SELECT iid FROM documents WHERE {where_sql} ORDER BY iid",
                                list(params)).fetchall()
            return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return self._read("filter documents", read)

    def list(self, cursor: str | None, limit: int, *, text: bool = True,
             metadata: bool = True, vector: bool = False
             ) -> tuple[list[StoredDocument], str | None]:
        """One page in internal-id order and the cursor of the next page (None at the end).
        A document replaced while paging moves to the end (it gets a new internal id)."""
        if not 1 <= limit <= 10_000:
            raise InvalidArgument("limit must be between 1 and 10000", {"limit": limit})
        after = decode_cursor(cursor) if cursor else 0

        def read(conn: sqlite3.Connection) -> list[StoredDocument]:
            sql = f"{self._select(text, metadata, vector)} WHERE iid > ? ORDER BY iid LIMIT ?"
            return [self._row(r, text, metadata, vector)
                    for r in conn.execute(sql, (after, limit + 1))]
        docs = self._read("list documents", read)
        if len(docs) > limit:
            return docs[:limit], encode_cursor(docs[limit - 1].iid)
        return docs, None

    def count(self) -> int:
        return self._read("count documents",
                          lambda c: int(c.execute("SELECT count(*) FROM documents").fetchone()[0]))

    @property
    def last_seq(self) -> int:
        """Sequence number of the latest committed write (the collection's write version)."""
        return self._read("read store state", lambda c: self._meta(c, "last_seq"))

    @property
    def write_version(self) -> int:
        """For cache invalidation: changes with every committed write (= ``last_seq``)."""
        return self.last_seq

    @property
    def pruned_upto(self) -> int:
        return self._read("read store state", lambda c: self._meta(c, "pruned_upto"))

    def changes_since(self, seq: int) -> ChangeSet:
        """Iids deleted after ``seq`` and rows (with vectors) written after ``seq``, read in
        one snapshot.  Iids are never reused, so the two sets are disjoint."""
        def read(conn: sqlite3.Connection) -> ChangeSet:
            upto = self._meta(conn, "last_seq")
            removed = [r[0] for r in conn.execute(
                "SELECT iid FROM deletions WHERE seq > ? ORDER BY seq", (seq,))]
            rows = conn.execute("SELECT iid, vector FROM documents WHERE seq > ? ORDER BY iid",
                                (seq,)).fetchall()
            vectors = (np.stack([self._decode(b) for _, b in rows]) if rows
                       else np.empty((0, self.dim), np.float32))
            return ChangeSet(seq, upto, np.array(removed, dtype=np.int64),
                             np.array([r[0] for r in rows], dtype=np.int64), vectors)
        return self._read("read changes", read)

    def iter_vectors(self, chunk_size: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All (iids, vectors) in chunks, for rebuilding an index.  Consistent only while no
        writer runs (the caller holds the collection's write lock)."""
        after = 0
        while True:
            rows = self._read("read vectors", lambda c: c.execute(
                "SELECT iid, vector FROM documents WHERE iid > ? ORDER BY iid LIMIT ?",
                (after, chunk_size)).fetchall())
            if not rows:
                return
            yield (np.array([r[0] for r in rows], dtype=np.int64),
                   np.stack([self._decode(b) for _, b in rows]))
            after = rows[-1][0]

    def backup_to(self, path: Path) -> None:
        """A consistent copy of the whole database in ``path`` (SQLite online backup API; no
        write can run meanwhile), as one self-contained file (rollback journal mode)."""
        with self._write_lock:
            if self._closed:
                raise StorageError("the document store is closed", {"path": str(self.path)})
            try:
                target = sqlite3.connect(path, isolation_level=None)
                try:
                    self._writer.backup(target)
                    target.execute("PRAGMA journal_mode=DELETE")
                finally:
                    target.close()
            except sqlite3.Error as exc:
                raise storage_error_from(exc, "back up the document store") from exc

    def disk_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                total += p.stat().st_size
        return total

    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            with self._readers_lock:
                for conn in self._idle_readers:
                    conn.close()
                self._idle_readers.clear()
            try:
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # a checkpoint is an optimisation; the WAL is replayed on next open
            self._writer.close()

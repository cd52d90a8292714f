"""Collection: a DocumentStore (durable truth) plus a vector index (derived, in memory).

Writes: validated first, then under the writer mutex the store commits (durable when the call
returns) and the index is updated, both while searches are held off, so a search always sees
the store and the index at the same write version.  Index training / compaction builds a new
index while searches continue on the old one, then swaps it in.

Start-up: the index snapshot (``index.snapshot``) is loaded if its checksum verifies and it
matches the collection, then the store's changes after the snapshot's seq are replayed;
otherwise the index is rebuilt from the store (with a warning).
"""
from __future__ import annotations

import fcntl
import logging
import math
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import CollectionConfig
from .errors import (CollectionNotFound, DimensionMismatch, DocumentNotFound, IndexServiceError,
                     InvalidArgument, InvalidFilter, InvalidVector, StorageError,
                     storage_error_from)
from .filters import CompiledFilter, parse_filter
from .locks import RWLock
from .persistence import build_index_from_store, load_index_snapshot, write_index_snapshot
from .snapshot import SnapshotCorrupt
from .store import DocumentStore, NewDocument, StoredDocument
from .types import (DeleteResult, Document, DocumentIn, DocumentPage, FilterLimits, SearchHit,
                    SnapshotPolicy, UpsertResult)
from .validation import check_ids, check_metadata
from .vector_index import VectorIndex, prepare_vectors

log = logging.getLogger(__name__)

STORE_FILE = "documents.sqlite3"
SNAPSHOT_FILE = "index.snapshot"
LOCK_FILE = "collection.lock"
MAX_TOP_K = 1000


class Collection:
    def __init__(self, directory: Path, name: str, config: CollectionConfig, *,
                 uid: str, created_at: str, snapshot_policy: SnapshotPolicy | None = None,
                 filter_limits: FilterLimits | None = None,
                 exact_subset_max: int | None = None) -> None:
        self.directory = Path(directory)
        self.name = name
        self.config = config
        self.uid = uid
        self.created_at = created_at
        self.snapshot_policy = snapshot_policy or SnapshotPolicy()
        self.filter_limits = filter_limits or FilterLimits()
        self._exact_subset_max = exact_subset_max
        self._write_mutex = threading.Lock()
        self._rw = RWLock()
        self._closed = False
        self._lock_fd = self._acquire_process_lock()
        try:
            self._store = DocumentStore(self.directory / STORE_FILE, config.dim)
            self._snapshot_seq = -1
            self._writes_since_snapshot = 0
            self._last_snapshot_time = time.monotonic()
            self._index, self._applied_seq = self._load_index()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # ------------------------------------------------------------------ start-up
    def _acquire_process_lock(self) -> int:
        try:
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise storage_error_from(exc, f"open collection {self.name!r}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StorageError(f"collection {self.name!r} is open in another process or "
                               "object", {"collection": self.name}, 503) from None
        return fd

    def _load_index(self) -> tuple[VectorIndex, int]:
        path = self.directory / SNAPSHOT_FILE
        try:
            index, applied, self._snapshot_seq, replayed = load_index_snapshot(
                path, self._store, uid=self.uid, config=self.config,
                exact_subset_max=self._exact_subset_max)
            log.info("collection %s: loaded index snapshot at seq %d, replayed %d changes",
                     self.name, self._snapshot_seq, replayed)
            return index, applied
        except SnapshotCorrupt as exc:
            if path.exists() or self._store.count():
                log.warning("collection %s: index snapshot unusable (%s); rebuilding the index "
                            "from the document store", self.name, exc)
            index, seq = self._build_from_store()
            if index.ntotal:
                self._try_snapshot(index, seq)
            return index, seq

    def _build_from_store(self) -> tuple[VectorIndex, int]:
        return build_index_from_store(self._store, self.config, self._exact_subset_max)

    # ------------------------------------------------------------------ validation helpers
    def _check_open(self) -> None:
        if self._closed:
            raise CollectionNotFound(f"collection {self.name!r} was deleted or closed",
                                     {"collection": self.name})

    def _compile(self, spec: Any) -> CompiledFilter:
        return parse_filter(spec, max_depth=self.filter_limits.max_depth,
                            max_conditions=self.filter_limits.max_conditions)

    def _vectors(self, vectors: Any, what: str) -> np.ndarray:
        array = prepare_vectors(vectors, self.config.dim, "dot", what)  # validate, keep as is
        if self.config.metric == "cosine" and (np.linalg.norm(array, axis=1) == 0).any():
            raise InvalidVector(f"{what}: a zero vector has no cosine similarity")
        return array

    def _document_vectors(self, docs: Sequence[DocumentIn], ids: list[str]) -> np.ndarray:
        """[n, dim] float32, checked one document at a time so errors name the document."""
        if not docs:
            return np.empty((0, self.config.dim), np.float32)
        for doc, doc_id in zip(docs, ids):
            if doc.vector is None or isinstance(doc.vector, (str, bytes)):
                raise InvalidVector(f"document {doc_id!r} needs a vector: a list of "
                                    f"{self.config.dim} numbers", {"id": doc_id})
            shape = np.shape(doc.vector)
            if shape != (self.config.dim,):
                got = shape[0] if len(shape) == 1 else list(shape)
                raise DimensionMismatch(
                    f"vector of document {doc_id!r} has dimension {got}, the collection "
                    f"expects {self.config.dim}",
                    {"expected": self.config.dim, "got": got, "id": doc_id})
        return self._vectors([d.vector for d in docs], "document vector")

    # ------------------------------------------------------------------ writes
    def upsert(self, docs: Sequence[DocumentIn]) -> UpsertResult:
        """Insert or replace documents (one transaction).  When this returns, the batch is
        committed; a replaced document's old vector is never found again."""
        ids = [d.id if d.id is not None else uuid.uuid4().hex for d in docs]
        check_ids(ids)
        for doc, doc_id in zip(docs, ids):
            if not isinstance(doc.text, str):
                raise InvalidArgument("text must be a string", {"id": doc_id})
            check_metadata(doc.metadata, doc_id)
        vectors = self._document_vectors(docs, ids)
        last = {doc_id: i for i, doc_id in enumerate(ids)}  # a repeated id: the last one wins
        rows = [NewDocument(doc_id, docs[i].text, docs[i].metadata, vectors[i])
                for doc_id, i in last.items()]
        if not rows:
            return UpsertResult([], self.write_version)
        with self._write_mutex:
            self._check_open()
            with self._rw.write():
                result = self._store.upsert(rows)
                self._apply(result.removed_iids, result.added_iids,
                            np.stack([r.vector for r in rows]), result.seq)
            self._after_write(len(rows))
        return UpsertResult(ids, result.seq)

    def _apply(self, removed: np.ndarray, added: np.ndarray, vectors: np.ndarray | None,
               seq: int) -> None:
        """Bring the index to ``seq`` (called under the write lock, after the commit)."""
        try:
            self._index.remove(removed)
            if vectors is not None:
                self._index.add(added, vectors)
        except Exception:  # the commit stands; the derived index must follow it
            log.exception("collection %s: index update failed; rebuilding from the store",
                          self.name)
            self._index, seq = self._build_from_store()
        self._applied_seq = seq

    def delete(self, ids: Sequence[str]) -> DeleteResult:
        ids = check_ids(ids)
        with self._write_mutex:
            self._check_open()
            with self._rw.write():
                result = self._store.delete(ids)
                self._apply(result.removed_iids, result.added_iids, None, result.seq)
            self._after_write(len(result.removed_iids))
        gone = set(result.removed_ext_ids)
        return DeleteResult(result.removed_ext_ids, [i for i in dict.fromkeys(ids)
                                                     if i not in gone], result.seq)

    def delete_by_filter(self, filter: Any) -> DeleteResult:
        """Delete every document matching ``filter``; an empty filter is refused."""
        compiled = self._compile(filter)
        if compiled.matches_all:
            raise InvalidFilter("an empty filter would delete every document; delete the "
                                "collection instead", {"location": "filter"})
        sql, params = compiled.to_sql()
        with self._write_mutex:
            self._check_open()
            with self._rw.write():
                result = self._store.delete_where(sql, params)
                self._apply(result.removed_iids, result.added_iids, None, result.seq)
            self._after_write(len(result.removed_iids))
        return DeleteResult(result.removed_ext_ids, [], result.seq)

    def _after_write(self, changed: int) -> None:
        """Index maintenance and the snapshot policy (under the writer mutex).  Failures are
        logged, never raised: the write itself is already committed."""
        self._writes_since_snapshot += changed
        reason = self._index.needs_rebuild()
        try:
            if reason:
                started = time.monotonic()
                rebuilt = self._index.rebuilt()  # searches go on with the old index meanwhile
                with self._rw.write():
                    self._index = rebuilt
                log.info("collection %s: index %s took %.2fs", self.name, reason,
                         time.monotonic() - started)
            if reason or self._snapshot_due():
                self._try_snapshot(self._index, self._applied_seq)
        except Exception:
            log.exception("collection %s: index maintenance failed", self.name)

    def _snapshot_due(self) -> bool:
        if self._writes_since_snapshot == 0:
            return False
        policy = self.snapshot_policy
        return (self._writes_since_snapshot >= policy.every_writes
                or time.monotonic() - self._last_snapshot_time >= policy.every_seconds)

    # ------------------------------------------------------------------ snapshots
    def _write_snapshot(self, index: VectorIndex, seq: int) -> int:
        size = write_index_snapshot(self.directory / SNAPSHOT_FILE, index, seq=seq,
                                    uid=self.uid, config=self.config)
        self._snapshot_seq = seq
        self._writes_since_snapshot = 0
        self._last_snapshot_time = time.monotonic()
        self._store.prune_deletions(seq)  # only once the snapshot is durable
        return size

    def _try_snapshot(self, index: VectorIndex, seq: int) -> None:
        try:
            self._write_snapshot(index, seq)
        except IndexServiceError as exc:
            log.warning("collection %s: index snapshot failed: %s", self.name, exc.message)

    def snapshot_index(self) -> dict[str, int]:
        """Write the index and the seq it includes to disk now (atomic, checksummed)."""
        with self._write_mutex:
            self._check_open()
            size = self._write_snapshot(self._index, self._applied_seq)
            return {"seq": self._snapshot_seq, "bytes": size}

    def export_files(self, directory: Path) -> dict[str, int]:
        """Write a consistent copy of the collection into ``directory``: the document store
        (SQLite online backup) and an index snapshot of the same seq.  Writes wait meanwhile;
        searches go on.  Used by :mod:`index.archive`."""
        with self._write_mutex:
            self._check_open()
            write_index_snapshot(Path(directory) / SNAPSHOT_FILE, self._index,
                                 seq=self._applied_seq, uid=self.uid, config=self.config)
            self._store.backup_to(Path(directory) / STORE_FILE)
            return {"seq": self._applied_seq, "count": self._store.count()}

    def maybe_snapshot(self) -> bool:
        """Apply the snapshot policy now (for a periodic caller); True if one was written."""
        with self._write_mutex:
            if self._closed or not self._snapshot_due():
                return False
            self._write_snapshot(self._index, self._applied_seq)
            return True

    # ------------------------------------------------------------------ reads
    @property
    def write_version(self) -> int:
        """Changes with every committed write (the store seq the visible state includes)."""
        return self._applied_seq

    def count(self) -> int:
        self._check_open()
        return self._store.count()

    def get(self, ids: Sequence[str], *, include_vector: bool = False) -> list[Document]:
        """Documents by id in the requested order; unknown ids are skipped."""
        ids = check_ids(ids)
        self._check_open()
        return [_document(d) for d in self._store.get(ids, vector=include_vector)]

    def get_document(self, doc_id: str, *, include_vector: bool = False) -> Document:
        found = self.get([doc_id], include_vector=include_vector)
        if not found:
            raise DocumentNotFound(f"document {doc_id!r} not found in {self.name!r}",
                                   {"collection": self.name, "id": doc_id})
        return found[0]

    def vector_of(self, ids: Sequence[str]) -> np.ndarray:
        """Stored vectors [n, dim] in the requested order; DocumentNotFound if any is missing."""
        docs = self._get_all(check_ids(ids))
        return np.stack([d.vector for d in docs]) if docs \
            else np.empty((0, self.config.dim), np.float32)

    def _get_all(self, ids: list[str]) -> list[StoredDocument]:
        self._check_open()
        docs = self._store.get(ids, text=False, metadata=False, vector=True)
        missing = sorted(set(ids) - {d.id for d in docs})
        if missing:
            raise DocumentNotFound(f"{len(missing)} document(s) not found in {self.name!r}",
                                   {"collection": self.name, "missing": missing[:100]})
        return docs

    def list_documents(self, cursor: str | None = None, limit: int = 100, *,
                       include_text: bool = True, include_metadata: bool = True,
                       include_vector: bool = False) -> DocumentPage:
        self._check_open()
        docs, next_cursor = self._store.list(cursor, limit, text=include_text,
                                             metadata=include_metadata, vector=include_vector)
        return DocumentPage([_document(d) for d in docs], next_cursor)

    def search(self, query_vectors: Any, top_k: int = 10, filter: Any = None,
               min_score: float | None = None, include_text: bool = True,
               include_metadata: bool = True) -> list[list[SearchHit]]:
        """Top-k hits per query vector ([q, dim] or one [dim] vector), best first.  The filter
        is applied inside the search: k hits come back whenever k documents match."""
        queries = prepare_vectors(query_vectors, self.config.dim, "dot", "query vector")
        compiled = self._compile(filter)
        with self._rw.read():
            self._check_open()
            return self._search_locked(queries, top_k, compiled, min_score, include_text,
                                       include_metadata, exclude=())

    def recommend(self, positive_ids: Sequence[str], negative_ids: Sequence[str] = (),
                  top_k: int = 10, filter: Any = None, min_score: float | None = None,
                  include_text: bool = True, include_metadata: bool = True,
                  negative_weight: float = 0.5) -> list[SearchHit]:
        """Documents like ``positive_ids`` and unlike ``negative_ids``: the query is
        mean(positive) - negative_weight * mean(negative) (vectors normalised first for
        cosine); the example documents themselves are never returned."""
        positive = check_ids(positive_ids, "positive ids")
        negative = check_ids(negative_ids, "negative ids")
        if not positive:
            raise InvalidArgument("recommend needs at least one positive id")
        if not isinstance(negative_weight, (int, float)) or not math.isfinite(negative_weight):
            raise InvalidArgument("negative_weight must be a finite number")
        compiled = self._compile(filter)
        with self._rw.read():
            self._check_open()
            docs = {d.id: d for d in self._get_all(positive + negative)}
            query = self._mean([docs[i].vector for i in positive])
            if negative:
                query = query - negative_weight * self._mean([docs[i].vector for i in negative])
            if not np.isfinite(query).all() or not np.any(query):
                raise InvalidArgument("the positive and negative examples cancel out")
            exclude = [docs[i].iid for i in dict.fromkeys(positive + negative)]
            return self._search_locked(query[None, :], top_k, compiled, min_score,
                                       include_text, include_metadata, exclude)[0]

    def _mean(self, vectors: list[np.ndarray]) -> np.ndarray:
        stacked = np.stack(vectors).astype(np.float32)
        if self.config.metric == "cosine":
            stacked = prepare_vectors(stacked, self.config.dim, "cosine")
        return stacked.mean(axis=0)

    def _search_locked(self, queries: np.ndarray, top_k: int, compiled: CompiledFilter,
                       min_score: float | None, include_text: bool, include_metadata: bool,
                       exclude: Sequence[int]) -> list[list[SearchHit]]:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise InvalidArgument(f"top_k must be an integer between 1 and {MAX_TOP_K}",
                                  {"top_k": top_k})
        if min_score is not None and (isinstance(min_score, bool) or not isinstance(
                min_score, (int, float)) or math.isnan(min_score)):
            raise InvalidArgument("min_score must be a number")
        excluded = np.asarray(exclude, dtype=np.int64)
        allowed = None
        k = top_k
        if not compiled.matches_all:
            sql, params = compiled.to_sql()
            allowed = np.setdiff1d(self._store.matching_iids(sql, params), excluded)
            if not len(allowed):
                return [[] for _ in range(len(queries))]
        else:
            k = top_k + len(excluded)  # over-fetch, then drop the excluded ids
        scores, iids = self._index.search(queries, k, allowed)
        keep = (iids >= 0) & ~np.isin(iids, excluded)
        if min_score is not None:
            keep &= scores >= min_score
        wanted = np.unique(iids[keep])
        rows = self._store.get_by_iids(wanted, text=include_text, metadata=include_metadata)
        results: list[list[SearchHit]] = []
        for row_scores, row_iids, row_keep in zip(scores, iids, keep):
            hits = []
            for score, iid in zip(row_scores[row_keep], row_iids[row_keep]):
                doc = rows.get(int(iid))
                if doc is None:  # cannot happen under the read lock; never return a ghost
                    log.error("collection %s: index hit %d missing from the store",
                              self.name, iid)
                    continue
                hits.append(SearchHit(doc.id, float(score), doc.text, doc.metadata))
            results.append(hits[:top_k])
        return results

    # ------------------------------------------------------------------ state
    def stats(self) -> dict[str, Any]:
        with self._rw.read():
            self._check_open()
            index_stats = self._index.stats()
            snapshot = self.directory / SNAPSHOT_FILE
            return {
                "name": self.name, "uid": self.uid, "created_at": self.created_at,
                "config": self.config.to_dict(), "count": self._store.count(),
                "index": index_stats, "index_type": index_stats["type"],
                "ntotal": index_stats["ntotal"], "tombstones": index_stats["tombstones"],
                "tombstone_bytes": index_stats["tombstone_bytes"],
                "index_bytes": index_stats["bytes"], "trained": index_stats["trained"],
                "snapshot_seq": self._snapshot_seq if self._snapshot_seq >= 0 else None,
                "snapshot_bytes": snapshot.stat().st_size if snapshot.exists() else 0,
                "store_bytes": self._store.disk_bytes(), "write_version": self._applied_seq,
            }

    def close(self, *, snapshot: bool = True) -> None:
        """Snapshot the index if it changed since the last snapshot, then release files."""
        with self._write_mutex:
            if self._closed:
                return
            with self._rw.write():
                self._closed = True
            if snapshot and self._applied_seq != self._snapshot_seq:
                self._try_snapshot(self._index, self._applied_seq)
            self._store.close()
            os.close(self._lock_fd)


def _document(doc: StoredDocument) -> Document:
    return Document(doc.id, doc.text, doc.metadata, doc.vector)


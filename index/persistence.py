"""The index of a collection on disk: snapshot it, load it back and bring it up to date from
the document store, or rebuild it from the store alone.

A snapshot holds the FAISS index, the store seq it includes, the collection's uid and config.
Loading refuses (SnapshotCorrupt) a snapshot that fails its checksum, belongs to another
collection or config, is newer than the store, or is older than the store's pruned change log
(its deletions could not be replayed); the caller then rebuilds from the store.
"""
from __future__ import annotations

from pathlib import Path

from .config import CollectionConfig
from .snapshot import SnapshotCorrupt, read_snapshot, write_snapshot
from .store import DocumentStore
from .vector_index import VectorIndex, create_index, index_from_parts

SNAPSHOT_FORMAT = 1


def write_index_snapshot(path: Path, index: VectorIndex, *, seq: int, uid: str,
                         config: CollectionConfig) -> int:
    """Atomically write ``index`` (which includes every store change up to ``seq``)."""
    header, blobs = index.to_parts()
    return write_snapshot(path, {"format": SNAPSHOT_FORMAT, "seq": seq, "uid": uid,
                                 "config": config.to_dict(), "index": header}, blobs)


def load_index_snapshot(path: Path, store: DocumentStore, *, uid: str,
                        config: CollectionConfig, exact_subset_max: int | None
                        ) -> tuple[VectorIndex, int, int, int]:
    """(index, store seq it now includes, snapshot seq, changes replayed); raises
    SnapshotCorrupt when the snapshot cannot be used.  No writer may run meanwhile."""
    header, blobs = read_snapshot(path)
    try:
        seq = int(header["seq"])
        if header.get("format") != SNAPSHOT_FORMAT or header.get("uid") != uid \
                or header.get("config") != config.to_dict():
            raise SnapshotCorrupt("snapshot belongs to another collection or configuration")
        if not store.pruned_upto <= seq <= store.last_seq:
            raise SnapshotCorrupt(f"snapshot seq {seq} cannot be replayed by the store "
                                  f"(store seq {store.last_seq}, log from {store.pruned_upto})")
        index = index_from_parts(header["index"], blobs, exact_subset_max=exact_subset_max)
        changes = store.changes_since(seq)
        index.remove(changes.removed_iids)
        index.add(changes.added_iids, changes.added_vectors)
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotCorrupt(f"snapshot cannot be applied: {exc}") from None
    if index.ntotal != store.count():
        raise SnapshotCorrupt("index and store disagree after replay")
    replayed = len(changes.added_iids) + len(changes.removed_iids)
    return index, changes.upto_seq, seq, replayed


def build_index_from_store(store: DocumentStore, config: CollectionConfig,
                           exact_subset_max: int | None) -> tuple[VectorIndex, int]:
    """(a fresh index holding every stored vector, the store seq it includes); trained or
    compacted as needed.  No writer may run meanwhile."""
    seq = store.last_seq
    index = create_index(config.index, config.dim, config.metric,
                         exact_subset_max=exact_subset_max)
    for iids, vectors in store.iter_vectors():
        index.add(iids, vectors)
    if index.needs_rebuild():
        index = index.rebuilt()
    return index, seq

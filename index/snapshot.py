"""Checksummed snapshot files, written atomically.

Layout: ``MAGIC | u64 header length | header JSON | blob bytes ... | sha256(everything before)``.
The header names each blob and its length.  A file is written to a temporary name in the same
directory, fsynced, renamed over the old one and the directory fsynced, so a crash leaves
either the old or the new snapshot, and any truncation or bit flip fails the checksum.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import storage_error_from

MAGIC = b"SEMSNAP1"
_LEN = struct.Struct("<Q")
_DIGEST = 32


class SnapshotCorrupt(Exception):
    """The snapshot file is missing, truncated, not a snapshot or fails its checksum."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(path: Path, header: Mapping[str, Any],
                   blobs: Mapping[str, bytes | memoryview | np.ndarray]) -> int:
    """Atomically write a snapshot; returns its size in bytes.  Raises StorageError."""
    path = Path(path)
    views = {name: memoryview(np.ascontiguousarray(b).view(np.uint8) if isinstance(b, np.ndarray)
                              else b).cast("B") for name, b in blobs.items()}
    full_header = {**header, "blobs": [[name, len(v)] for name, v in views.items()]}
    header_bytes = json.dumps(full_header, sort_keys=True).encode()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as fh:
            for piece in (MAGIC, _LEN.pack(len(header_bytes)), header_bytes, *views.values()):
                digest.update(piece)
                fh.write(piece)
                size += len(piece)
            fh.write(digest.digest())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise storage_error_from(exc, "write index snapshot") from exc
    return size + _DIGEST


def read_snapshot(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, blobs as uint8 arrays) of a verified snapshot; raises SnapshotCorrupt."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SnapshotCorrupt("snapshot file is missing") from None
    except OSError as exc:
        raise SnapshotCorrupt(f"snapshot file cannot be read: {exc}") from None
    if len(data) < len(MAGIC) + _LEN.size + _DIGEST or not data.startswith(MAGIC):
        raise SnapshotCorrupt("not a snapshot file (bad magic or too short)")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotCorrupt("snapshot checksum mismatch (truncated or corrupted)")
    (header_len,) = _LEN.unpack_from(body, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    try:
        header = json.loads(body[start:start + header_len])
        offset = start + header_len
        blobs: dict[str, np.ndarray] = {}
        for name, length in header.pop("blobs"):
            blobs[name] = np.frombuffer(body, dtype=np.uint8, count=length, offset=offset)
            offset += length
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotCorrupt(f"snapshot header is malformed: {exc}") from None
    if offset != len(body):
        raise SnapshotCorrupt("snapshot length does not match its header")
    return header, blobs

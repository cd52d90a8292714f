"""Exceptions raised by the ``index`` package.

Every exception carries what the HTTP layer needs to build the error envelope
``{"error": {"type": ..., "message": ..., "details": {...}}}``: a machine-readable ``type``,
a human message and a ``details`` dict, plus the ``http_status`` it stands for.  The index
package itself never builds HTTP responses; it only says what went wrong.
"""
from __future__ import annotations

import errno
import sqlite3
from typing import Any

# SQLite primary result codes (the low byte of the extended code).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26


class IndexServiceError(Exception):
    """Base class: something the client or the operator should be told about."""

    type: str = "index_error"
    http_status: int = 500

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "details": self.details}


class InvalidName(IndexServiceError):
    type = "invalid_name"
    http_status = 400


class InvalidArgument(IndexServiceError):
    """A malformed request value (top_k, cursor, ids, metadata...)."""

    type = "invalid_argument"
    http_status = 400


class InvalidConfig(InvalidArgument):
    type = "invalid_config"


class CollectionNotFound(IndexServiceError):
    type = "collection_not_found"
    http_status = 404


class CollectionConflict(IndexServiceError):
    """The collection exists with a different configuration."""

    type = "collection_conflict"
    http_status = 409


class DocumentNotFound(IndexServiceError):
    type = "document_not_found"
    http_status = 404


class InvalidFilter(IndexServiceError):
    type = "invalid_filter"
    http_status = 400


class DimensionMismatch(IndexServiceError):
    type = "dimension_mismatch"
    http_status = 400


class InvalidVector(IndexServiceError):
    type = "invalid_vector"
    http_status = 400


class StorageError(IndexServiceError):
    """The storage cannot serve the request: 507 when the disk is full, 503 otherwise
    (read-only, locked, cannot open, I/O error) because retrying later may succeed."""

    type = "storage_error"

    def __init__(
        self, message: str, details: dict[str, Any] | None = None, http_status: int = 503
    ) -> None:
        super().__init__(message, details)
        self.http_status = http_status


def storage_error_from(exc: BaseException, action: str) -> StorageError:
    """Translate a sqlite3 or OS error into a StorageError with the right status."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        name = getattr(exc, "sqlite_errorname", None)
        primary = code & 0xFF if isinstance(code, int) else None
        details: dict[str, Any] = {"action": action, "sqlite_error": name or str(exc)}
        if primary == _SQLITE_FULL or "disk is full" in str(exc):
            return StorageError(f"{action}: the disk is full", details, http_status=507)
        if primary in (_SQLITE_READONLY,):
            return StorageError(f"{action}: the storage is read-only", details, 503)
        if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return StorageError(f"{action}: the storage is locked", details, 503)
        if primary in (_SQLITE_CANTOPEN,):
            return StorageError(f"{action}: the storage cannot be opened", details, 503)
        if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return StorageError(f"{action}: the storage file is corrupt", details, 503)
        if primary == _SQLITE_IOERR:
            return StorageError(f"{action}: I/O error", details, 503)
        return StorageError(f"{action}: {exc}", details, 503)
    if isinstance(exc, OSError):
        details = {"action": action, "errno": errno.errorcode.get(exc.errno or 0, exc.errno)}
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return StorageError(f"{action}: the disk is full", details, http_status=507)
        if exc.errno == errno.EROFS:
            return StorageError(f"{action}: the file system is read-only", details, 503)
        return StorageError(f"{action}: {exc.strerror or exc}", details, 503)
    return StorageError(f"{action}: {exc}", {"action": action}, 503)

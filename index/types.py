"""Plain data types crossing the ``index`` package boundary."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class DocumentIn:
    """A document to upsert.  ``vector`` was computed by the caller (any float sequence of the
    collection's dimension); ``id`` is generated (uuid4 hex) when None."""

    text: str
    vector: Any
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Document:
    id: str
    text: str | None
    metadata: dict[str, Any] | None
    vector: np.ndarray | None = None  # as stored (not normalised), when asked for


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float  # higher is better for every metric (l2: minus the distance)
    text: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class UpsertResult:
    ids: list[str]  # in input order
    write_version: int


@dataclass(frozen=True)
class DeleteResult:
    deleted: list[str]  # external ids that existed and are now gone
    not_found: list[str]  # requested ids that did not exist (delete by ids only)
    write_version: int


@dataclass(frozen=True)
class DocumentPage:
    documents: list[Document]
    next_cursor: str | None  # None on the last page


@dataclass(frozen=True)
class SnapshotPolicy:
    """Snapshot the index after ``every_writes`` changed documents, or when ``every_seconds``
    have passed since the last snapshot and something changed (checked after each write and by
    :meth:`Collection.maybe_snapshot`).  Snapshots only shorten start-up: durability comes
    from the document store."""

    every_writes: int = 10_000
    every_seconds: float = 300.0


@dataclass(frozen=True)
class FilterLimits:
    max_depth: int = 8
    max_conditions: int = 256

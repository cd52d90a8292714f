"""Checks on what callers hand to a collection: document ids and metadata."""
from __future__ import annotations

import math
from typing import Any, Sequence

from .errors import InvalidArgument

MAX_ID_LENGTH = 256
MAX_METADATA_DEPTH = 32


def check_ids(ids: Any, what: str = "ids") -> list[str]:
    """A list of document ids: non-empty strings of at most 256 characters, no NUL."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise InvalidArgument(f"{what} must be a list of strings")
    for value in ids:
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_LENGTH \
                or "\x00" in value:
            raise InvalidArgument(f"document ids must be non-empty strings of at most "
                                  f"{MAX_ID_LENGTH} characters without NUL",
                                  {"id": str(value)[:100]})
    return list(ids)


def check_metadata(metadata: Any, doc_id: str) -> None:
    """Metadata must be a JSON object: string keys, finite numbers, limited nesting."""
    if not isinstance(metadata, dict):
        raise InvalidArgument("metadata must be a JSON object", {"id": doc_id})

    def walk(value: Any, depth: int) -> None:
        if depth > MAX_METADATA_DEPTH:
            raise InvalidArgument(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels",
                                  {"id": doc_id})
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidArgument("metadata keys must be strings", {"id": doc_id})
                walk(item, depth + 1)
        elif isinstance(value, list):
            for item in value:
                walk(item, depth + 1)
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument("metadata numbers must be finite", {"id": doc_id})
        elif isinstance(value, int) and not isinstance(value, bool) \
                and not -(2 ** 63) <= value < 2 ** 63:
            raise InvalidArgument("metadata integers must fit in 64 bits (filters compare them "
                                  "in SQLite)", {"id": doc_id})
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            raise InvalidArgument(f"metadata values must be JSON (got {type(value).__name__})",
                                  {"id": doc_id})
    walk(metadata, 0)

"""The vector side of the service: collections, the durable document store, FAISS indexes
and metadata filters.  Stores vectors; never imports ``app`` or ``models``."""
from .collection import Collection
from .config import CollectionConfig, IndexConfig
from .errors import (CollectionConflict, CollectionNotFound, DimensionMismatch, DocumentNotFound,
                     IndexServiceError, InvalidArgument, InvalidConfig, InvalidFilter,
                     InvalidName, InvalidVector, StorageError)
from .filters import CompiledFilter, parse_filter
from .manager import CollectionManager, validate_name
from .store import DocumentStore
from .types import (DeleteResult, Document, DocumentIn, DocumentPage, FilterLimits, SearchHit,
                    SnapshotPolicy, UpsertResult)
from .vector_index import VectorIndex, create_index

__all__ = [
    "Collection", "CollectionConfig", "CollectionConflict", "CollectionManager",
    "CollectionNotFound", "CompiledFilter", "DeleteResult", "DimensionMismatch", "Document",
    "DocumentIn", "DocumentNotFound", "DocumentPage", "DocumentStore", "FilterLimits",
    "IndexConfig", "IndexServiceError", "InvalidArgument", "InvalidConfig", "InvalidFilter",
    "InvalidName", "InvalidVector", "SearchHit", "SnapshotPolicy", "StorageError",
    "UpsertResult", "VectorIndex", "create_index", "parse_filter", "validate_name",
]

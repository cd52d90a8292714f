"""Collection and index configuration: validated, normalised (defaults filled in) and
comparable, so creating a collection twice with equivalent settings is recognised as the same.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import InvalidConfig

METRICS = ("cosine", "dot", "l2")
INDEX_TYPES = ("flat", "hnsw", "ivf")
MAX_DIM = 65536

# name: (default, minimum, maximum).  Documented in the README ("Index choice").
INDEX_PARAMS: dict[str, dict[str, tuple[int, int, int]]] = {
    "flat": {},
    "hnsw": {"m": (32, 4, 128), "ef_construction": (200, 8, 4096), "ef_search": (128, 1, 4096)},
    "ivf": {"nlist": (256, 1, 65536), "nprobe": (16, 1, 65536)},
}
# Spellings accepted on input (FAISS / Qdrant style); stored under the snake_case name.
PARAM_ALIASES = {"M": "m", "efConstruction": "ef_construction", "efSearch": "ef_search",
                 "ef": "ef_search"}


@dataclass(frozen=True)
class IndexConfig:
    type: str = "flat"
    params: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise InvalidConfig(f"unknown index type {self.type!r} "
                                f"(choose one of {', '.join(INDEX_TYPES)})", {"type": self.type})
        specs = INDEX_PARAMS[self.type]
        params: dict[str, int] = {}
        for raw_key, value in dict(self.params).items():
            key = PARAM_ALIASES.get(raw_key, raw_key)
            if key not in specs:
                allowed = ", ".join(specs) or "none"
                raise InvalidConfig(f"unknown parameter {raw_key!r} for a {self.type} index "
                                    f"(allowed: {allowed})", {"parameter": raw_key})
            default, low, high = specs[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidConfig(f"{self.type} parameter {raw_key!r} must be an integer "
                                    f"between {low} and {high}", {"parameter": raw_key})
            params[key] = value
        for key, (default, _, _) in specs.items():
            params.setdefault(key, default)
        if self.type == "ivf" and params["nprobe"] > params["nlist"]:
            raise InvalidConfig("ivf parameter nprobe cannot exceed nlist",
                                {"nprobe": params["nprobe"], "nlist": params["nlist"]})
        object.__setattr__(self, "params", dict(sorted(params.items())))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "IndexConfig":
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InvalidConfig("index must be an object such as {\"type\": \"hnsw\"}")
        data = dict(data)
        kind = data.pop("type", "flat")
        params = data.pop("params", None)
        if params is not None:
            if not isinstance(params, Mapping):
                raise InvalidConfig("index params must be an object")
            data.update(params)
        return cls(str(kind), data)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **self.params}


@dataclass(frozen=True)
class CollectionConfig:
    """What a collection is: vector size, similarity, the encoder name (opaque to the index)
    and the index type.  Two configs are equal when they would behave identically."""

    dim: int
    metric: str = "cosine"
    model: str | None = None
    index: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) \
                or not 1 <= self.dim <= MAX_DIM:
            raise InvalidConfig(f"dim must be an integer between 1 and {MAX_DIM}",
                                {"dim": self.dim})
        if self.metric not in METRICS:
            raise InvalidConfig(f"unknown metric {self.metric!r} "
                                f"(choose one of {', '.join(METRICS)})", {"metric": self.metric})
        if self.model is not None and not isinstance(self.model, str):
            raise InvalidConfig("model must be a string")
        if isinstance(self.index, Mapping):
            object.__setattr__(self, "index", IndexConfig.from_dict(self.index))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CollectionConfig":
        unknown = set(data) - {"dim", "metric", "model", "index"}
        if unknown:
            raise InvalidConfig(f"unknown collection settings: {', '.join(sorted(unknown))}")
        if "dim" not in data:
            raise InvalidConfig("dim is required")
        return cls(dim=data["dim"], metric=data.get("metric", "cosine"),
                   model=data.get("model"), index=IndexConfig.from_dict(data.get("index")))

    def to_dict(self) -> dict[str, Any]:
        return {"dim": self.dim, "metric": self.metric, "model": self.model,
                "index": self.index.to_dict()}


from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Include = Literal["text", "metadata"]


class CreateCollection(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "minilm", "index": {"type": "flat"}, "metric": "cosine"},
        {"model": "mpnet", "index": {"type": "hnsw", "m": 32, "ef_construction": 200, "ef_search": 128}},
        {"dim": 128, "metric": "l2"},
    ]})

    model: str | None = Field(None, description="Encoder that embeds this collection's texts "
                              "(default: the default encoder). Omit and give `dim` for a vectors-only collection.")
    dim: int | None = Field(None, ge=1, le=65536, description="Only for vectors-only collections")
    metric: Literal["cosine", "dot", "l2"] = "cosine"
    index: dict[str, Any] = Field(default_factory=lambda: {"type": "flat"},
                                  description='{"type": "flat"|"hnsw"|"ivf", ...params}')


class DocumentModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, min_length=1, max_length=256)
    text: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    vector: list[float] | None = Field(None, description="Precomputed vector (dimension checked)")


class UpsertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"documents": [{"id": "doc-1", "text": "FAISS is a library for vector search",
                        "metadata": {"lang": "en", "year": 2024, "tags": ["search"]}},
                       {"text": "Redis is an in-memory data store", "metadata": {"lang": "en", "year": 2021}}]}]})
    documents: list[DocumentModel]


class UpsertResponse(BaseModel):
    ids: list[str]
    count: int
    write_version: int


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"ids": ["doc-1", "doc-2"]}, {"filter": {"year": {"$lt": 2020}}}]})
    ids: list[str] | None = None
    filter: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> "DeleteRequest":
        if (self.ids is None) == (self.filter is None):
            raise ValueError("give either ids or filter")
        return self


class DeleteResponse(BaseModel):
    deleted: int
    deleted_ids: list[str]
    not_found: list[str] = Field(default_factory=list)
    write_version: int


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"query": "vector database", "top_k": 5, "filter": {"year": {"$gte": 2022}},
         "include": ["text", "metadata"]},
        {"vector": [0.1, 0.2, 0.3], "top_k": 3, "min_score": 0.3}]})
    query: str | None = None
    vector: list[float] | None = None
    top_k: int = Field(10, ge=1)
    filter: dict[str, Any] | None = None
    min_score: float | None = None
    include: list[Include] = Field(default_factory=lambda: ["text", "metadata"])

    @model_validator(mode="after")
    def _one(self) -> "SearchRequest":
        if (self.query is None) == (self.vector is None):
            raise ValueError("give either query (text) or vector")
        return self


class BatchSearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    searches: list[SearchRequest] = Field(..., min_length=1)


class Hit(BaseModel):
    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] | None = None


class SearchResponse(BaseModel):
    results: list[Hit]


class BatchSearchResponse(BaseModel):
    batches: list[SearchResponse]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"positive": ["doc-1"], "negative": ["doc-7"], "top_k": 5}]})
    positive: list[str] = Field(..., min_length=1)
    negative: list[str] = Field(default_factory=list)
    top_k: int = Field(10, ge=1)
    filter: dict[str, Any] | None = None
    min_score: float | None = None
    negative_weight: float = Field(0.5, ge=0.0, le=10.0)
    include: list[Include] = Field(default_factory=lambda: ["text", "metadata"])


class DocumentOut(BaseModel):
    id: str
    text: str | None = None
    metadata: dict[str, Any] | None = None
    vector: list[float] | None = None


class DocumentPageOut(BaseModel):
    documents: list[DocumentOut]
    next_cursor: str | None

"""Collections: the index package plus the encoders that embed their texts, plus result caching.

The index package is synchronous (SQLite commits, FAISS searches); every call into it runs in
a worker thread so the event loop keeps serving.  A write is acknowledged only after
``Collection.upsert`` returned, i.e. after the store committed it.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Sequence

import anyio.to_thread
import numpy as np

from index import (Collection, CollectionManager, DocumentIn, FilterLimits, SearchHit, SnapshotPolicy,
                   parse_filter)
from index.errors import CollectionNotFound

from ..errors import ApiError
from ..schemas.collections import (CreateCollection, DocumentModel, Hit, RecommendRequest,
                                   SearchRequest)
from ..settings import Settings
from .embedding import EmbeddingService

log = logging.getLogger("semsearch.collections")


async def run_sync(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))


class CollectionService:
    def __init__(self, settings: Settings, embedding: EmbeddingService, cache: Any | None) -> None:
        self.settings = settings
        self.embedding = embedding
        self.cache = cache
        self.manager = CollectionManager(
            settings.data_dir,
            snapshot_policy=SnapshotPolicy(every_writes=settings.index_snapshot_every_writes,
                                           every_seconds=settings.index_snapshot_every_s),
            filter_limits=FilterLimits(max_depth=settings.max_filter_depth,
                                       max_conditions=settings.max_filter_conditions))
        self._snapshot_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._snapshot_task = asyncio.get_running_loop().create_task(self._snapshot_loop())

    async def _snapshot_loop(self) -> None:
        period = max(1.0, min(10.0, self.settings.index_snapshot_every_s / 3))
        while True:
            await asyncio.sleep(period)
            try:
                await run_sync(self.manager.maybe_snapshot_all)
            except Exception:  # never let the periodic task die
                log.exception("periodic snapshot failed")

    async def stop(self) -> None:
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
            try:
                await self._snapshot_task
            except asyncio.CancelledError:
                pass
        await run_sync(self.manager.close_all)

    # -- collections -------------------------------------------------------------------
    def get(self, name: str) -> Collection:
        return self.manager.get(name)

    async def create(self, name: str, req: CreateCollection) -> tuple[Collection, bool]:
        if req.model == "auto":
            raise ApiError(400, "invalid_model", "a collection fixes one encoder; 'auto' is only "
                           "for stateless endpoints")
        if req.model is None and req.dim is not None:
            model, dim = None, req.dim
        else:
            le = self.embedding.encoder(req.model)
            model, dim = le.name, le.encoder.dim
            if req.dim is not None and req.dim != dim:
                raise ApiError(400, "dimension_mismatch",
                               f"model {model} produces {dim} dimensions, not {req.dim}")
        config = {"dim": dim, "metric": req.metric, "model": model, "index": req.index}
        return await run_sync(self.manager.create, name, config)

    async def describe(self, col: Collection) -> dict[str, Any]:
        return await run_sync(col.stats)

    async def delete(self, name: str) -> None:
        await run_sync(self.manager.delete, name)

    # -- documents ---------------------------------------------------------------------
    async def upsert(self, col: Collection, docs: Sequence[DocumentModel]) -> Any:
        limit = self.settings.max_documents_per_upsert
        if not docs:
            raise ApiError(422, "empty_input", "documents must contain at least one document")
        if len(docs) > limit:
            raise ApiError(413, "too_many_documents",
                           f"{len(docs)} documents in one upsert; at most {limit}", {"limit": limit})
        need = [i for i, d in enumerate(docs) if d.vector is None]
        vectors: dict[int, Any] = {i: d.vector for i, d in enumerate(docs) if d.vector is not None}
        if need:
            model = col.config.model
            if model is None:
                raise ApiError(400, "vector_required",
                               f"collection {col.name!r} has no encoder: every document needs a vector",
                               {"index": need[0]})
            texts, cut = self.embedding.check_texts([docs[i].text for i in need], "documents[].text",
                                                    limit=limit)
            emb = await self.embedding.embed(model, texts, cut)
            for row, i in enumerate(need):
                vectors[i] = emb.vectors[row]
        batch = [DocumentIn(text=d.text, vector=vectors[i], id=d.id, metadata=d.metadata)
                 for i, d in enumerate(docs)]
        return await run_sync(col.upsert, batch)

    # -- search ------------------------------------------------------------------------
    def _check_top_k(self, top_k: int) -> None:
        if top_k > self.settings.max_top_k:
            raise ApiError(422, "top_k_too_large", f"top_k {top_k} exceeds the limit {self.settings.max_top_k}",
                           {"limit": self.settings.max_top_k})

    def check_filter(self, spec: Any) -> None:
        if spec is not None:
            parse_filter(spec, max_depth=self.settings.max_filter_depth,
                         max_conditions=self.settings.max_filter_conditions)

    async def _query_vectors(self, col: Collection, reqs: Sequence[SearchRequest]) -> np.ndarray:
        out = np.zeros((len(reqs), col.config.dim), dtype=np.float32)
        text_idx = [i for i, r in enumerate(reqs) if r.query is not None]
        for i, r in enumerate(reqs):
            if r.vector is not None:
                if len(r.vector) != col.config.dim:
                    raise ApiError(400, "dimension_mismatch",
                                   f"vector has {len(r.vector)} dimensions; collection {col.name!r} "
                                   f"has {col.config.dim}", {"expected": col.config.dim, "got": len(r.vector)})
                arr = np.asarray(r.vector, dtype=np.float64)
                if not np.all(np.isfinite(arr)):
                    raise ApiError(400, "invalid_vector", "vector contains NaN or infinity")
                out[i] = arr
        if text_idx:
            if col.config.model is None:
                raise ApiError(400, "vector_required",
                               f"collection {col.name!r} has no encoder: search with a vector")
            texts, cut = self.embedding.check_texts([reqs[i].query for i in text_idx], "query")
            emb = await self.embedding.embed(col.config.model, texts, cut)
            out[text_idx] = emb.vectors
        return out

    async def search(self, col: Collection, reqs: Sequence[SearchRequest]) -> list[bytes]:
        """Each request's hits as the JSON array its response carries.  A result-cache hit is
        returned as stored, without decoding it into models and encoding it again."""
        for r in reqs:
            self._check_top_k(r.top_k)
            self.check_filter(r.filter)  # malformed / too big: 400 before any encoding
        version = f"{col.uid}:{col.write_version}"   # read before searching: see docstring of cache
        keys: list[str] | None = None
        cached: dict[str, bytes] = {}
        if self.cache is not None:
            keys = [self.cache.result_key("search", {"c": col.name, "r": r.model_dump(mode="json")}, version)
                    for r in reqs]
            cached = await self.cache.get_many(list(set(keys)),
                                               local_ttl_s=self.settings.cache_result_ttl_s)
        results: list[bytes | None] = [None] * len(reqs)
        for i, k in enumerate(keys or []):
            if k in cached and _is_hits_json(cached[k]):   # garbage from Redis is a miss
                results[i] = cached[k]
        todo = [i for i, r in enumerate(results) if r is None]
        if todo:
            sub = [reqs[i] for i in todo]
            qv = await self._query_vectors(col, sub)
            # requests in one batch may differ in filter/top_k: group identical search params
            groups: dict[str, list[int]] = {}
            for j, r in enumerate(sub):
                groups.setdefault(json.dumps([r.top_k, r.filter, r.min_score, sorted(r.include)],
                                             sort_keys=True, default=str), []).append(j)
            found: list[list[SearchHit]] = [[] for _ in sub]
            for members in groups.values():
                r0 = sub[members[0]]
                hits = await run_sync(col.search, qv[members], r0.top_k, r0.filter, r0.min_score,
                                      "text" in r0.include, "metadata" in r0.include)
                for j, h in zip(members, hits):
                    found[j] = h
            to_store: dict[str, bytes] = {}
            for j, i in enumerate(todo):
                raw = json.dumps([_hit(h).model_dump(exclude_none=True) for h in found[j]]).encode()
                results[i] = raw
                if keys:
                    to_store[keys[i]] = raw
            if to_store and self.cache is not None:
                await self.cache.set_many(to_store, ttl_s=self.settings.cache_result_ttl_s)
        return [r or b"[]" for r in results]

    async def recommend(self, col: Collection, req: RecommendRequest) -> list[Hit]:
        self._check_top_k(req.top_k)
        hits = await run_sync(col.recommend, req.positive, req.negative, req.top_k, req.filter,
                              req.min_score, "text" in req.include, "metadata" in req.include,
                              req.negative_weight)
        return [_hit(h) for h in hits]


def _is_hits_json(raw: bytes) -> bool:
    """A cached value is a JSON array of hit objects (anything else came from a broken Redis)."""
    try:
        hits = json.loads(raw)
    except (ValueError, TypeError):
        return False
    return isinstance(hits, list) and all(isinstance(h, dict) and "id" in h and "score" in h
                                          for h in hits)


def _hit(h: SearchHit) -> Hit:
    return Hit(id=h.id, score=round(float(h.score), 6), text=h.text, metadata=h.metadata)


__all__ = ["CollectionService", "CollectionNotFound", "run_sync"]

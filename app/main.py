"""FastAPI application: lifespan creates the shared objects once; one router per resource."""
from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import FastAPI

from .cache import build_cache
from .errors import install_error_handlers
from .middleware import RequestContextMiddleware, configure_logging
from .metrics import EncodeTimingMiddleware, ServiceMetrics
from .routers import metrics as metrics_router
from .routers import collections, embeddings, health, models, similarity
from .services.collections import CollectionService
from .services.embedding import EmbeddingService
from .services.encoders import EncoderPool
from .settings import Settings, get_settings

log = logging.getLogger("semsearch")


@dataclass
class ServiceState:
    settings: Settings
    pool: EncoderPool
    embedding: EmbeddingService
    cache: Any = None
    collections: Any = None
    ready: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    async def cache_health(self) -> str:
        """ok | degraded | disabled (no REDIS_URL: in-process LRU only)."""
        if self.cache is None:
            return "disabled"
        return str(await self.cache.check())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if settings.model_cache:
        os.environ["MODEL_CACHE"] = str(settings.model_cache)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        pool = EncoderPool(settings)
        pool.load()
        cache = build_cache(settings.redis_url, local_max_items=settings.cache_local_max_items,
                            local_max_bytes=settings.cache_local_max_bytes,
                            redis_timeout_ms=settings.redis_timeout_ms,
                            breaker_failures=settings.redis_breaker_failures,
                            breaker_cooldown_s=settings.redis_breaker_cooldown_s,
                            redis_default_ttl_s=settings.cache_embedding_ttl_s,
                            key_prefix=settings.cache_prefix)
        svc = ServiceState(settings=settings, pool=pool,
                           embedding=EmbeddingService(pool, settings, cache), cache=cache)
        svc.collections = CollectionService(settings, svc.embedding, cache)
        pool.start()
        svc.collections.start()
        app.state.svc = svc
        svc.ready = True
        log.info("service ready", extra={"fields": {"models": sorted(pool.loaded)}})
        try:
            yield
        finally:
            svc.ready = False
            # Order matters for a graceful stop: finish queued encodes, then flush index
            # snapshots and close the stores.
            await pool.stop()
            await svc.collections.stop()
            await cache.aclose()
            log.info("service stopped")

    app = FastAPI(
        title="semsearch",
        version="0.1.0",
        summary="Semantic search and similarity over ONNX Sentence-BERT encoders and FAISS",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for r in (health.router, models.router, embeddings.router, similarity.router, collections.router):
        app.include_router(r)
    # Metrics: a per-app registry; request counts/latency come from the middleware's observe hook,
    # encoder wait/inference from EncodeTimingMiddleware (added first, so it runs inside).
    app.state.metrics = ServiceMetrics(lambda: getattr(app.state, "svc", None))
    app.include_router(metrics_router.router)
    app.add_middleware(EncodeTimingMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes,
                       observe=app.state.metrics.observe)
    return app


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory app.main:app_factory``."""
    s = get_settings()
    configure_logging(s.log_level, s.log_json)
    return create_app(s)

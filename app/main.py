"""FastAPI application: lifespan creates the shared objects once; one router per resource."""
from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from .auth import load_keyring
from .cache import build_cache
from .errors import ERROR_RESPONSES, install_error_handlers
from .json_guard import JsonBodyGuard
from .middleware import RequestContextMiddleware, configure_logging
from .metrics import EncodeTimingMiddleware, ServiceMetrics
from .routers import metrics as metrics_router
from .routers import snapshots as snapshots_router
from .routers import classify as classify_router
from .routers import cluster as cluster_router
from .routers import jobs as jobs_router
from .routers import evaluate as evaluate_router
from .routers import collections, embeddings, health, models, similarity
from .services.collections import CollectionService
from .services.embedding import EmbeddingService
from .services.jobs import get_jobs
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
        get_jobs(svc)  # background jobs (cluster, classifier training): in memory only
        app.state.svc = svc
        svc.ready = True
        log.info("service ready", extra={"fields": {"models": sorted(pool.loaded)}})
        try:
            yield
        finally:
            svc.ready = False
            # Order matters for a graceful stop: finish queued encodes, then flush index
            # snapshots and close the stores.
            await get_jobs(svc).aclose()  # cancel jobs first: they use encoders and stores
            await pool.stop()
            await svc.collections.stop()
            await cache.aclose()
            log.info("service stopped")

    app = FastAPI(
        title="semsearch",
        version="0.1.0",
        summary="Semantic search and similarity over ONNX Sentence-BERT encoders and FAISS",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        # no 307 to the path without/with a trailing slash: a client that resolves the '..' in a
        # redirected DELETE could land on another resource; an API answers 404 instead
        redirect_slashes=False,
    )
    install_error_handlers(app)
    # Keys are parsed here, so a malformed API_KEYS / API_KEYS_FILE stops the start-up.
    app.state.keyring = load_keyring(settings.api_keys, settings.api_keys_file)
    if not app.state.keyring.enabled:
        loopback = settings.host in ("127.0.0.1", "localhost", "::1")
        (log.info if loopback else log.warning)(
            "authentication is off (no API_KEYS / API_KEYS_FILE) while listening on %s", settings.host)
    for r in (health.router, models.router, embeddings.router, similarity.router, collections.router):
        app.include_router(r)
    app.include_router(snapshots_router.router)
    for r in (cluster_router.router, classify_router.router, jobs_router.router, evaluate_router.router):
        app.include_router(r)
    # Metrics: a per-app registry; request counts/latency come from the middleware's observe hook,
    # encoder wait/inference from EncodeTimingMiddleware (added first, so it runs inside).
    app.state.metrics = ServiceMetrics(lambda: getattr(app.state, "svc", None))
    app.include_router(metrics_router.router)
    app.add_middleware(EncodeTimingMiddleware, metrics=app.state.metrics)
    app.add_middleware(JsonBodyGuard)  # NaN/Infinity/overflow/lone surrogates -> 422
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes,
                       observe=app.state.metrics.observe, log_requests=settings.access_log)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:  # off by default; outermost, so errors (401, 413...) carry the CORS headers too
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "X-Process-Time-Ms", "Retry-After"])
    return app


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory app.main:app_factory``."""
    s = get_settings()
    configure_logging(s.log_level, s.log_json)
    return create_app(s)

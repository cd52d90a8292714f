"""Prometheus metrics, one `CollectorRegistry` per app (several apps in one process never clash).

Two kinds of metric:

- observed per request: request counts and latency per route template and status (fed by the
  `observe` hook of `RequestContextMiddleware`), and the encoder queue wait / inference time of
  requests that encoded text (read from the request's `RequestTimings` by `EncodeTimingMiddleware`);
- read at scrape time from the live service state (`ServiceStateCollector`): encoder queue depth,
  batch sizes, batches, inference seconds, cache hits/misses per tier, index size per collection,
  background jobs.  The collector is deliberately tolerant: a part of the state that does not
  exist (no collections manager, no job runner, a stats shape it does not know) is skipped, never
  an error, so a scrape cannot fail because some subsystem is absent or changed shape.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    Metric)
from prometheus_client.registry import Collector

from .context import current_timings

log = logging.getLogger("semsearch.metrics")

# Seconds; covers a cached 1 ms hit up to a 30 s bulk request.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ENCODE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

Scope = dict[str, Any]


class ServiceMetrics:
    """The metrics of one app.  `observe` is the middleware hook; `render` is the scrape."""

    def __init__(self, state: Callable[[], Any] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("semsearch_http_requests", "HTTP requests by route template and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("semsearch_http_request_duration_seconds",
                                 "HTTP request latency by route template and status",
                                 ["method", "route", "status"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.queue_wait = Histogram("semsearch_encoder_queue_wait_seconds",
                                    "Time a request's texts waited in the encoder queue",
                                    ["route"], buckets=ENCODE_BUCKETS, registry=self.registry)
        self.inference = Histogram("semsearch_encoder_request_inference_seconds",
                                   "ONNX inference time spent serving one request",
                                   ["route"], buckets=ENCODE_BUCKETS, registry=self.registry)
        self.state_collector = ServiceStateCollector(state or (lambda: None))
        self.registry.register(self.state_collector)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def observe_encoding(self, route: str, queue_ms: float, inference_ms: float) -> None:
        self.queue_wait.labels(route).observe(max(0.0, queue_ms) / 1000.0)
        self.inference.labels(route).observe(max(0.0, inference_ms) / 1000.0)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, content type): Prometheus text 0.0.4, or OpenMetrics if the scraper asks."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class EncodeTimingMiddleware:
    """Inner pure-ASGI middleware: after the app answered, record the encoder queue wait and
    inference time the request accumulated in its `RequestTimings` (set by the outer
    `RequestContextMiddleware`).  Must be added *before* `RequestContextMiddleware` so that it
    runs inside it, while the request's timings are still the current ones."""

    def __init__(self, app: Callable[..., Any], metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            t = current_timings.get()
            if t is not None and t.batch_size > 0:  # the encoder ran (not all cache hits)
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                try:
                    self.metrics.observe_encoding(route, t.queue_ms, t.inference_ms)
                except Exception:  # noqa: BLE001 - metrics must never fail a request
                    log.exception("could not record encoder timings")


# --------------------------------------------------------------------------- scrape-time state

def _first_attr(obj: Any, names: Iterable[str]) -> Any:
    extras = getattr(obj, "extras", None)
    for name in names:
        value = getattr(obj, name, None)
        if value is None and isinstance(extras, Mapping):
            value = extras.get(name)
        if value is not None:
            return value
    return None


def _listable(container: Any) -> bool:
    return isinstance(container, Mapping) or callable(getattr(container, "list", None)) or (
        callable(getattr(container, "names", None)) and callable(getattr(container, "get", None)))


def _items(container: Any) -> list[tuple[str, Any]]:
    """(name, collection) pairs from a manager with list()/names()+get(), or a mapping."""
    if isinstance(container, Mapping):
        return [(str(k), v) for k, v in container.items()]
    lister = getattr(container, "list", None)
    if callable(lister):
        out = []
        for c in lister():
            name = getattr(c, "name", None)
            if name is not None:
                out.append((str(name), c))
        return out
    names, getter = getattr(container, "names", None), getattr(container, "get", None)
    if callable(names) and callable(getter):
        return [(str(n), getter(n)) for n in names()]
    return []


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class ServiceStateCollector(Collector):
    """Reads the live `ServiceState` at scrape time.  `state()` returns it, or None before the
    lifespan has created it (then only the request metrics are exported)."""

    def __init__(self, state: Callable[[], Any]) -> None:
        self.state = state

    def describe(self) -> list[Metric]:
        return []  # dynamic: nothing to register up front

    def collect(self) -> Iterator[Metric]:
        svc = self.state()
        if svc is None:
            return
        up = GaugeMetricFamily("semsearch_ready", "1 once models are loaded and the service is ready")
        up.add_metric([], 1.0 if getattr(svc, "ready", False) else 0.0)
        yield up
        for part in (self._encoders, self._cache, self._collections, self._jobs):
            try:
                yield from part(svc)
            except Exception:  # noqa: BLE001 - one broken subsystem must not break the scrape
                log.exception("metrics: %s failed", part.__name__)

    # -- encoders / micro-batcher -----------------------------------------------------
    def _encoders(self, svc: Any) -> Iterator[Metric]:
        pool = getattr(svc, "pool", None)
        loaded = getattr(pool, "loaded", None)
        if not isinstance(loaded, Mapping):
            return
        depth = GaugeMetricFamily("semsearch_encoder_queue_depth", "Texts waiting in the encoder queue",
                                  labels=["model"])
        batches = CounterMetricFamily("semsearch_encoder_batches", "ONNX batches run", labels=["model"])
        texts = CounterMetricFamily("semsearch_encoder_texts", "Texts encoded", labels=["model"])
        infer = CounterMetricFamily("semsearch_encoder_inference_seconds",
                                    "Time spent in ONNX inference", labels=["model"])
        rejected = CounterMetricFamily("semsearch_encoder_rejected",
                                       "Requests refused because the encoder queue was full (429)",
                                       labels=["model"])
        tokens = CounterMetricFamily("semsearch_encoder_tokens", "Tokens in encoded batches",
                                     labels=["model", "kind"])
        sizes = HistogramMetricFamily("semsearch_encoder_batch_size", "Texts per ONNX batch",
                                      labels=["model"])
        for name, le in loaded.items():
            batcher = getattr(le, "batcher", None)
            if batcher is None:
                continue
            depth.add_metric([name], float(getattr(batcher, "queue_depth", 0) or 0))
            st = getattr(batcher, "stats", None)
            if st is None:
                continue
            batches.add_metric([name], float(st.batches))
            texts.add_metric([name], float(st.texts))
            infer.add_metric([name], float(st.inference_s))
            rejected.add_metric([name], float(st.rejected))
            tokens.add_metric([name, "real"], float(st.real_tokens))
            tokens.add_metric([name, "padded"], float(st.padded_tokens))
            counts = dict(st.batch_sizes)  # copy: the worker may update it meanwhile
            buckets: list[tuple[str, float]] = []
            for bound in BATCH_SIZE_BUCKETS:
                cumulative = sum(n for size, n in counts.items() if size <= bound)
                buckets.append((str(float(bound)), float(cumulative)))
            all_count = sum(counts.values())
            total = sum(size * n for size, n in counts.items())
            buckets.append(("+Inf", float(all_count)))
            sizes.add_metric([name], buckets, float(total))
        yield from (depth, batches, texts, infer, rejected, tokens, sizes)

    # -- two-tier cache ----------------------------------------------------------------
    def _cache(self, svc: Any) -> Iterator[Metric]:
        cache = getattr(svc, "cache", None)
        stats_fn = getattr(cache, "stats", None)
        if not callable(stats_fn):
            return
        s = stats_fn()
        hits = CounterMetricFamily("semsearch_cache_hits", "Cache hits per tier", labels=["tier"])
        misses = CounterMetricFamily("semsearch_cache_misses", "Cache misses per tier", labels=["tier"])
        for tier in ("local", "redis"):
            if (h := _number(s.get(f"{tier}_hits"))) is not None:
                hits.add_metric([tier], h)
            if (m := _number(s.get(f"{tier}_misses"))) is not None:
                misses.add_metric([tier], m)
        yield hits
        yield misses
        for key, kind, doc in (
                ("local_items", "gauge", "Entries in the in-process LRU"),
                ("local_bytes", "gauge", "Bytes held by the in-process LRU"),
                ("local_evictions", "counter", "Entries evicted from the in-process LRU"),
                ("redis_errors", "counter", "Redis calls that failed (counted as misses)"),
                ("redis_garbage", "counter", "Redis values that failed validation (counted as misses)"),
                ("redis_skipped", "counter", "Redis calls skipped because the breaker was open"),
                ("breaker_opens", "counter", "Times the Redis circuit breaker opened")):
            value = _number(s.get(key))
            if value is None:
                continue
            fam = (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(f"semsearch_cache_{key}", doc)
            fam.add_metric([], value)
            yield fam
        state = s.get("breaker_state")
        if isinstance(state, str):
            fam = GaugeMetricFamily("semsearch_cache_redis_breaker_state",
                                    "Redis circuit breaker state (1 for the current one)", labels=["state"])
            for st in ("closed", "open", "half_open", "disabled"):
                fam.add_metric([st], 1.0 if state == st else 0.0)
            yield fam

    # -- collections -------------------------------------------------------------------
    def _collections(self, svc: Any) -> Iterator[Metric]:
        manager = _first_attr(svc, ("collections", "collection_manager", "manager"))
        # a service object wrapping the index-side CollectionManager: use the manager
        while manager is not None and not _listable(manager) and getattr(manager, "manager", None) is not None:
            manager = manager.manager
        if manager is None or not _listable(manager):
            return
        docs = GaugeMetricFamily("semsearch_collection_documents", "Documents stored per collection",
                                 labels=["collection"])
        vectors = GaugeMetricFamily("semsearch_collection_index_vectors",
                                    "Vectors in the collection's index (including tombstones)",
                                    labels=["collection"])
        nbytes = GaugeMetricFamily("semsearch_collection_index_bytes", "Index size in bytes",
                                   labels=["collection"])
        tomb = GaugeMetricFamily("semsearch_collection_index_tombstones",
                                 "Deleted vectors not yet reclaimed", labels=["collection"])
        n = 0
        for name, coll in _items(manager):
            stats: Mapping[str, Any] = {}
            stats_fn = getattr(coll, "stats", None)
            try:
                if callable(stats_fn):
                    stats = stats_fn() or {}
                elif isinstance(coll, Mapping):
                    stats = coll
            except Exception:  # noqa: BLE001 - closed/deleted between list and stats
                continue
            count = _number(stats.get("count"))
            if count is None and callable(getattr(coll, "count", None)):
                try:
                    count = _number(coll.count())
                except Exception:  # noqa: BLE001
                    count = None
            if count is not None:
                docs.add_metric([name], count)
            for fam, key in ((vectors, "ntotal"), (nbytes, "index_bytes"), (tomb, "tombstones")):
                if (v := _number(stats.get(key))) is not None:
                    fam.add_metric([name], v)
            n += 1
        total = GaugeMetricFamily("semsearch_collections", "Collections open")
        total.add_metric([], float(n))
        yield from (total, docs, vectors, nbytes, tomb)

    # -- background jobs ---------------------------------------------------------------
    def _jobs(self, svc: Any) -> Iterator[Metric]:
        runner = _first_attr(svc, ("jobs", "job_runner", "job_manager"))
        if runner is None:
            return
        by_state: dict[str, float] = {}
        stats_fn = getattr(runner, "stats", None)
        raw: Any = stats_fn() if callable(stats_fn) else None
        if isinstance(raw, Mapping):
            states = raw.get("by_state") or raw.get("states") or raw
            for k, v in states.items():
                if (num := _number(v)) is not None:
                    by_state[str(k)] = num
        else:
            jobs: Any = None
            for name in ("list", "all", "values"):
                fn = getattr(runner, name, None)
                if callable(fn):
                    jobs = fn()
                    break
            if jobs is None and isinstance(getattr(runner, "jobs", None), Mapping):
                jobs = runner.jobs.values()
            for job in jobs or ():
                st = job.get("status") if isinstance(job, Mapping) else (
                    getattr(job, "status", None) or getattr(job, "state", None))
                st = getattr(st, "value", st)
                if st is not None:
                    by_state[str(st)] = by_state.get(str(st), 0.0) + 1
        fam = GaugeMetricFamily("semsearch_jobs", "Background jobs by state", labels=["state"])
        for st, v in sorted(by_state.items()):
            fam.add_metric([st], v)
        yield fam

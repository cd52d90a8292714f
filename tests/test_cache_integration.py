"""Embedding cache in the request path, with a real redis-server that goes away and comes back."""
from __future__ import annotations

import time

import numpy as np
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import make_settings


def _batches(client) -> int:
    return client.app.state.svc.pool.get("minilm").batcher.stats.texts


def test_hits_skip_the_encoder(tmp_path, built_minilm, redis_server):
    settings = make_settings(tmp_path, redis_url=redis_server.url, cache_prefix="t-hit:")
    with TestClient(create_app(settings)) as c:
        before = _batches(c)
        r1 = c.post("/v1/embeddings", json={"input": ["cache me", "and me"]})
        assert _batches(c) == before + 2 and r1.headers["x-cache-misses"] == "2"
        r2 = c.post("/v1/embeddings", json={"input": ["cache me", "  and   me "]})  # whitespace-normalised
        assert _batches(c) == before + 2, "a hit must not reach the encoder"
        assert r2.headers["x-cache-hits"] == "2"
        assert np.allclose(r1.json()["data"][0]["embedding"], r2.json()["data"][0]["embedding"])
    # a new process (fresh local LRU) still hits, through Redis
    with TestClient(create_app(settings)) as c:
        r3 = c.post("/v1/embeddings", json={"input": "cache me"})
        assert r3.headers["x-cache-hits"] == "1" and _batches(c) == 0
        assert c.app.state.svc.cache.stats()["redis_hits"] >= 1


def test_redis_outage_degrades_then_recovers(tmp_path, built_minilm, fresh_redis_server):
    srv = fresh_redis_server
    settings = make_settings(tmp_path, redis_url=srv.url, redis_breaker_cooldown_s=0.5,
                             cache_prefix="t-out:")
    with TestClient(create_app(settings)) as c:
        assert c.get("/readyz").json()["cache"] == "ok"
        srv.stop()
        for i in range(6):     # requests keep succeeding while Redis is down
            r = c.post("/v1/embeddings", json={"input": f"during outage {i}"})
            assert r.status_code == 200
        assert c.get("/readyz").json()["cache"] == "degraded"
        srv.start()
        time.sleep(0.7)
        deadline = time.time() + 10
        while c.get("/readyz").json()["cache"] != "ok" and time.time() < deadline:
            time.sleep(0.2)
        assert c.get("/readyz").json()["cache"] == "ok"
        c.post("/v1/embeddings", json={"input": "after recovery"})
        assert srv.client().dbsize() >= 1, "writes reach Redis again"


def test_garbage_in_redis_is_a_miss(tmp_path, built_minilm, fresh_redis_server):
    settings = make_settings(tmp_path, redis_url=fresh_redis_server.url, cache_prefix="t-junk:")
    with TestClient(create_app(settings)) as c:
        c.post("/v1/embeddings", json={"input": "poison me"})
        raw = fresh_redis_server.client()
        for key in raw.keys("t-junk:*"):
            raw.set(key, b"garbage!")
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/embeddings", json={"input": "poison me"})
        assert r.status_code == 200 and r.headers["x-cache-misses"] == "1"
        assert abs(np.linalg.norm(r.json()["data"][0]["embedding"]) - 1) < 1e-3

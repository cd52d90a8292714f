"""Cache layer against a real redis-server (tests/redis_server.py): bounds, tiers, outage,
slowness, garbage, and key hygiene. Timing checks are generous behavioural bounds, not benchmarks."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
import zlib

import numpy as np
import pytest

from app.cache import (
    CircuitBreaker, LocalLRU, RedisTier, TwoTierCache, build_cache, decode_vector,
    embedding_key, encode_vector, frame, normalise_text, result_key, unframe,
)
from tests.redis_server import RedisServer, fresh_redis_server, redis_server  # noqa: F401

SHA_A = "a" * 64
SHA_B = "b" * 64


def _ns() -> str:
    return "t" + uuid.uuid4().hex[:12]


def _cache(server: RedisServer, namespace: str, **kw: object) -> TwoTierCache:
    kw.setdefault("breaker_cooldown_s", 0.5)
    return build_cache(server.url, namespace=namespace, **kw)  # type: ignore[arg-type]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------- local LRU

def test_lru_bounded_by_item_count_evicts_least_recently_used() -> None:
    lru = LocalLRU(max_items=3, max_bytes=10_000)
    for k in "abc":
        lru.set(k, k.encode())
    assert lru.get("a") == b"a"  # a is now most recent; b is the LRU entry
    lru.set("d", b"d")
    assert len(lru) == 3 and lru.get("b") is None
    assert lru.get_many(["a", "c", "d"]) == {"a": b"a", "c": b"c", "d": b"d"}
    assert lru.stats()["local_evictions"] == 1


def test_lru_bounded_by_bytes() -> None:
    lru = LocalLRU(max_items=1000, max_bytes=100)  # cost = len(key) + len(value)
    lru.set("k1", b"x" * 40)
    lru.set("k2", b"x" * 40)
    assert lru.nbytes == 84
    lru.set("k3", b"x" * 40)  # 126 > 100: k1 must go
    assert lru.get("k1") is None and lru.get("k2") is not None and lru.nbytes == 84
    lru.set("big", b"x" * 200)  # larger than the whole budget: not stored, nothing evicted
    assert lru.get("big") is None and len(lru) == 2
    lru.set("k2", b"y")  # overwrite recomputes the size
    assert lru.nbytes == 42 + 3 and lru.get("k2") == b"y"


def test_lru_ttl_expiry_default_and_per_entry() -> None:
    clock = FakeClock()
    lru = LocalLRU(max_items=10, max_bytes=10_000, default_ttl_s=10, clock=clock)
    lru.set("default", b"1")
    lru.set("short", b"2", ttl_s=1)
    clock.now += 1.5
    assert lru.get("short") is None and lru.get("default") == b"1"
    clock.now += 9
    assert lru.get("default") is None
    s = lru.stats()
    assert s["local_expirations"] == 2 and s["local_items"] == 0 and s["local_bytes"] == 0


def test_lru_is_thread_safe_and_stays_within_bounds() -> None:
    lru = LocalLRU(max_items=50, max_bytes=2_000)

    def hammer(seed: int) -> None:
        for i in range(2_000):
            k = f"k{(seed * 7 + i) % 200}"
            lru.set(k, b"v" * (i % 30))
            lru.get(k)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lru) <= 50 and lru.nbytes <= 2_000
    assert lru.nbytes == sum(len(k) + len(v) for k, (v, _) in lru._data.items())


# ----------------------------------------------------------------------------- both tiers

def test_round_trip_through_both_tiers_with_local_promotion(redis_server: RedisServer) -> None:
    ns = _ns()

    async def scenario() -> None:
        writer, reader = _cache(redis_server, ns), _cache(redis_server, ns)
        keys = [writer.embedding_key("minilm", SHA_A, f"text {i}") for i in range(3)]
        vecs = {k: encode_vector(np.full(4, i, np.float32)) for i, k in enumerate(keys)}
        await writer.set_many(vecs, ttl_s=60)
        assert await writer.get_many(keys) == vecs
        assert writer.stats()["local_hits"] == 3 and writer.stats()["redis_hits"] == 0

        # a second process: empty local tier, same Redis namespace
        missing = reader.embedding_key("minilm", SHA_A, "never stored")
        got = await reader.get_many(keys + [missing])
        assert got == vecs
        s = reader.stats()
        assert (s["local_misses"], s["redis_hits"], s["redis_misses"]) == (4, 3, 1)
        assert len(reader.local) == 3  # Redis hits were promoted
        assert await reader.get(keys[0]) == vecs[keys[0]]
        s = reader.stats()
        assert s["local_hits"] == 1 and s["redis_hits"] == 3  # served locally, Redis untouched
        assert decode_vector(got[keys[2]], 4).tolist() == [2.0] * 4
        assert reader.health() == "ok" and s["breaker_state"] == "closed"

        with redis_server.client() as raw:
            assert unframe(raw.get(keys[0])) == vecs[keys[0]]  # stored framed
            assert 0 < raw.ttl(keys[0]) <= 60
        await writer.aclose()
        await reader.aclose()

    asyncio.run(scenario())


def test_local_only_when_redis_url_unset() -> None:
    async def scenario() -> None:
        for url in (None, ""):
            cache = build_cache(url)
            key = cache.result_key("search", {"q": "x"}, "v1")
            await cache.set(key, b"result")
            assert await cache.get(key) == b"result"
            assert cache.health() == "disabled" and await cache.check() == "disabled"
            assert cache.stats()["breaker_state"] == "disabled"

    asyncio.run(scenario())


def test_cache_survives_event_loop_change(redis_server: RedisServer) -> None:
    cache = _cache(redis_server, _ns())
    key = cache.embedding_key("minilm", SHA_A, "loop")
    asyncio.run(cache.set(key, b"v"))
    cache.local.clear()
    assert asyncio.run(cache.get(key)) == b"v"  # a new loop: the client is rebuilt, not broken
    assert cache.stats()["redis_errors"] == 0
    asyncio.run(cache.aclose())


def test_concurrent_async_requests(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        # generous timeout: this checks correctness under a burst, not latency on a busy machine
        cache = _cache(redis_server, _ns(), redis_timeout_ms=1000)
        keys = [cache.embedding_key("m", SHA_A, str(i)) for i in range(200)]
        await asyncio.gather(*(cache.set(k, k.encode()) for k in keys))
        cache.local.clear()
        results = await asyncio.gather(*(cache.get_many(keys[i::10]) for i in range(10)))
        assert sum(len(r) for r in results) == 200
        assert all(v == k.encode() for r in results for k, v in r.items())
        assert cache.stats()["redis_errors"] == 0
        await cache.aclose()

    asyncio.run(scenario())


# ----------------------------------------------------------------------------- failures

def test_redis_outage_opens_breaker_and_recovers_after_restart(
        fresh_redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    server = fresh_redis_server
    caplog.set_level(logging.INFO, logger="semsearch.cache")

    async def scenario() -> None:
        cache = _cache(server, _ns(), breaker_failures=3, breaker_cooldown_s=0.5)
        before = cache.embedding_key("m", SHA_A, "before outage")
        await cache.set(before, b"1")
        assert cache.health() == "ok"

        server.stop()
        for i in range(5):
            t0 = time.monotonic()
            assert await cache.get(cache.embedding_key("m", SHA_A, f"down {i}")) is None
            await cache.set(cache.embedding_key("m", SHA_A, f"down-set {i}"), b"x")  # no raise
            assert time.monotonic() - t0 < 0.5
        assert await cache.get(before) == b"1"  # the local tier still serves
        s = cache.stats()
        assert s["redis_errors"] == 3 and s["breaker_state"] == "open" and s["breaker_opens"] == 1
        assert s["redis_skipped"] >= 7  # after opening, Redis is not even tried
        assert cache.health() == "degraded" and await cache.check() == "degraded"
        assert any(r.levelno == logging.WARNING and "breaker open" in r.getMessage()
                   for r in caplog.records)

        server.start()  # same port, empty (no persistence)
        assert cache.health() == "degraded"  # still cooling down
        await asyncio.sleep(0.6)
        after = cache.embedding_key("m", SHA_A, "after restart")
        await cache.set(after, b"2")  # the half-open trial succeeds and closes the breaker
        assert cache.health() == "ok" and cache.stats()["breaker_state"] == "closed"
        with server.client() as raw:
            assert unframe(raw.get(after)) == b"2"
        cache.local.clear()
        assert await cache.get(after) == b"2"
        assert cache.stats()["redis_hits"] >= 1
        assert any(r.levelno == logging.INFO and "closed" in r.getMessage()
                   for r in caplog.records)
        await cache.aclose()

    asyncio.run(scenario())


def test_killed_redis_is_a_miss_not_an_error(fresh_redis_server: RedisServer) -> None:
    async def scenario() -> None:
        cache = _cache(fresh_redis_server, _ns())
        key = cache.embedding_key("m", SHA_A, "k")
        await cache.set(key, b"v")
        cache.local.clear()
        fresh_redis_server.kill()
        assert await cache.get(key) is None
        assert cache.health() == "degraded" and cache.stats()["redis_errors"] == 1
        await cache.aclose()

    asyncio.run(scenario())


def test_garbage_values_are_misses(redis_server: RedisServer,
                                   caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        cache = _cache(redis_server, _ns())
        k_junk, k_crc, k_short, k_good = (cache.embedding_key("m", SHA_A, t)
                                          for t in ("junk", "crc", "short", "good"))
        good = frame(b"payload")
        bad_crc = good[:-1] + b"X"
        with redis_server.client() as raw:
            raw.set(k_junk, b"\x00garbage that is not ours")
            raw.set(k_crc, bad_crc)
            raw.set(k_short, good[:5])
            raw.set(k_good, good)
        got = await cache.get_many([k_junk, k_crc, k_short, k_good])
        assert got == {k_good: b"payload"}
        s = cache.stats()
        assert s["redis_garbage"] == 3 and s["redis_hits"] == 1 and s["redis_errors"] == 0
        assert cache.health() == "ok"  # garbage is a miss, not an outage
        assert len(cache.local) == 1  # garbage is never promoted
        assert any("unreadable" in r.getMessage() for r in caplog.records)
        await cache.aclose()

    caplog.set_level(logging.WARNING, logger="semsearch.cache")
    asyncio.run(scenario())


def test_slow_redis_returns_within_timeout(fresh_redis_server: RedisServer) -> None:
    async def scenario() -> None:
        cache = _cache(fresh_redis_server, _ns(), redis_timeout_ms=50)
        key = cache.embedding_key("m", SHA_A, "slow")
        await cache.set(key, b"v")
        cache.local.clear()
        fresh_redis_server.pause(800)
        t0 = time.monotonic()
        assert await cache.get(key) is None
        assert time.monotonic() - t0 < 0.5
        assert cache.stats()["redis_errors"] == 1 and cache.health() == "degraded"
        await asyncio.sleep(0.9)  # pause over; breaker never opened (1 < 3 failures)
        assert await cache.get(key) == b"v"
        assert cache.health() == "ok"
        await cache.aclose()

    asyncio.run(scenario())


def test_breaker_half_open_allows_a_single_trial() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=2, cooldown_s=5, clock=clock)
    b.record_failure(OSError())
    assert b.state == "closed" and b.allow()
    b.record_failure(OSError())
    assert b.state == "open" and not b.allow()
    clock.now += 5
    assert b.allow() and not b.allow()  # one trial only
    b.record_failure(OSError())
    assert b.state == "open" and b.opens == 1 and not b.allow()
    clock.now += 5
    assert b.allow()
    b.release()  # trial cancelled: another caller may try
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_unsafe_keys_and_namespace_are_rejected(redis_server: RedisServer) -> None:
    with pytest.raises(ValueError):
        build_cache(redis_server.url, namespace="a b")
    tier = RedisTier(redis_server.url)
    with pytest.raises(ValueError):
        asyncio.run(tier.mget(["semsearch:user text with spaces*"]))


# ----------------------------------------------------------------------------- keys, codecs

def test_embedding_key_is_a_fixed_length_hash_without_user_text() -> None:
    short = embedding_key("minilm", SHA_A, "hi")
    long = embedding_key("minilm", SHA_A, "secret user text " * 100)
    assert len(short) == len(long) == len("semsearch:emb:") + 64
    assert short.startswith("semsearch:emb:") and "secret" not in long
    assert embedding_key("minilm", SHA_A, "  hello \t\n  world ") == \
        embedding_key("minilm", SHA_A, "hello world")
    assert embedding_key("minilm", SHA_A, "caf\u0065\u0301") == embedding_key("minilm", SHA_A, "caf\u00e9")
    assert embedding_key("minilm", SHA_A, "Hello") != embedding_key("minilm", SHA_A, "hello")
    assert embedding_key("minilm", SHA_A, "x") != embedding_key("minilm", SHA_B, "x")
    assert embedding_key("minilm", SHA_A, "x") != embedding_key("mpnet", SHA_A, "x")
    assert embedding_key("m", SHA_A, "\ud800 lone surrogate")  # never crashes
    assert normalise_text("\u00a0a\u2003 b ") == "a b"


def test_result_key_depends_on_payload_and_version_only() -> None:
    p1 = {"collection": "docs", "query": "what is *? [x]", "k": 10, "filter": {"a": 1, "b": 2}}
    p2 = {"filter": {"b": 2, "a": 1}, "k": 10, "query": "what is *? [x]", "collection": "docs"}
    k1 = result_key("search", p1, "v7")
    assert k1 == result_key("search", p2, "v7")  # canonical JSON: key order irrelevant
    assert k1 != result_key("search", p1, "v8")  # every write invalidates
    assert k1 != result_key("classify", p1, "v7")
    assert k1.startswith("semsearch:res:search:") and len(k1) == len("semsearch:res:search:") + 64
    assert "*" not in k1 and "docs" not in k1
    with pytest.raises(ValueError):
        result_key("search *", p1, "v7")
    ns_cache = build_cache(None, namespace="test1")
    assert ns_cache.result_key("search", p1, "v7").startswith("semsearch:test1:res:search:")


def test_vector_codec_round_trip_and_garbage() -> None:
    v = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    data = encode_vector(v)
    assert len(data) == 384 * 4
    out = decode_vector(data, 384)
    assert out is not None and out.dtype == np.float32 and np.array_equal(out, v)
    out[0] = 1.0  # writable copy
    assert decode_vector(data[:-1], 384) is None
    assert decode_vector(data, 768) is None
    assert decode_vector(None, 384) is None
    assert decode_vector(encode_vector(np.array([1.0, np.nan], np.float32)), 2) is None
    assert np.array_equal(decode_vector(encode_vector(np.arange(3, dtype=np.float64)), 3),
                          [0, 1, 2])
    with pytest.raises(ValueError):
        encode_vector(np.zeros((2, 2), np.float32))


def test_frame_detects_tampering() -> None:
    f = frame(b"abc")
    assert unframe(f) == b"abc" and unframe(frame(b"")) == b""
    assert unframe(f + b"x") is None and unframe(f[:-1]) is None
    assert unframe(b"XYZ" + f[3:]) is None and unframe("text") is None and unframe(None) is None
    assert zlib.crc32(b"abc") == int.from_bytes(f[8:12], "big")

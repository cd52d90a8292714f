"""Two-tier cache: a bounded in-process LRU in front of an optional, untrusted Redis.

Redis is a best-effort accelerator, never a dependency: every Redis failure (down, slow,
garbage) becomes a cache miss plus a counter, never an exception. The Redis tier is async
(`redis.asyncio`) because the service runs on an asyncio event loop; the local tier is a plain
thread-safe LRU that is cheap enough to call directly from async code.

Keys are only ever built by `embedding_key` / `result_key`: a prefix plus a sha256 hex digest, so
no user-supplied string reaches Redis as a key or key pattern. `RedisTier` re-checks every key
against a strict character set as a second line of defence.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import struct
import threading
import time
import unicodedata
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

logger = logging.getLogger("semsearch.cache")

DEFAULT_PREFIX = "semsearch:"
DEFAULT_LOCAL_MAX_ITEMS = 100_000
DEFAULT_LOCAL_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_EMBEDDING_TTL_S = 7 * 24 * 3600
DEFAULT_RESULT_TTL_S = 300
DEFAULT_REDIS_TIMEOUT_MS = 50
DEFAULT_BREAKER_FAILURES = 3
DEFAULT_BREAKER_COOLDOWN_S = 5.0

Health = Literal["ok", "degraded", "disabled"]
T = TypeVar("T")

_SAFE_PREFIX = re.compile(r"[A-Za-z0-9_.:\-]{0,64}")
_SAFE_NAMESPACE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_SAFE_KIND = re.compile(r"[a-z0-9_]{1,32}")
_SAFE_KEY = re.compile(r"[A-Za-z0-9_.:\-]{1,256}")


# --------------------------------------------------------------------------- keys

def normalise_text(text: str) -> str:
    """Unicode NFC, strip, collapse every run of whitespace to one space.

    Case is deliberately NOT folded: some encoders are case-sensitive, and a lowercasing encoder
    (MiniLM) merely gets two cache entries for two spellings, which is safe."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _sha256_hex(*parts: str) -> str:
    h = hashlib.sha256()
    for i, part in enumerate(parts):
        if i:
            h.update(b"\0")
        # surrogatepass: a lone surrogate from JSON input must not crash key building.
        h.update(part.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _check_prefix(prefix: str) -> str:
    if not _SAFE_PREFIX.fullmatch(prefix):
        raise ValueError(f"unsafe cache key prefix: {prefix!r}")
    return prefix


def embedding_key(encoder_name: str, onnx_sha256: str, text: str, *,
                  prefix: str = DEFAULT_PREFIX) -> str:
    """prefix + "emb:" + sha256(encoder_name \\0 onnx_sha256 \\0 normalise_text(text))."""
    return f"{_check_prefix(prefix)}emb:{_sha256_hex(encoder_name, onnx_sha256, normalise_text(text))}"


def result_key(kind: str, payload: Mapping[str, Any], version_token: str, *,
               prefix: str = DEFAULT_PREFIX) -> str:
    """prefix + "res:" + kind + ":" + sha256(kind \\0 version_token \\0 canonical JSON(payload)).

    `kind` is a code constant ("search", "similarity", ...); the payload (which carries the
    user's query and collection name) is only ever hashed. Pass the collection's write version
    as `version_token` so that every write invalidates earlier results by construction."""
    if not _SAFE_KIND.fullmatch(kind):
        raise ValueError(f"result kind must match {_SAFE_KIND.pattern}: {kind!r}")
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=True, allow_nan=False)
    return f"{_check_prefix(prefix)}res:{kind}:{_sha256_hex(kind, version_token, canonical)}"


# --------------------------------------------------------------------------- codecs

def encode_vector(vector: np.ndarray) -> bytes:
    """A 1-D vector as little-endian float32 bytes (no header: Redis values are framed anyway)."""
    arr = np.ascontiguousarray(vector, dtype="<f4")
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D vector, got shape {arr.shape}")
    return arr.tobytes()


def decode_vector(data: bytes | None, dim: int) -> np.ndarray | None:
    """Inverse of `encode_vector`; None (never an exception) for wrong length or non-finite."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) != dim * 4:
        return None
    arr = np.frombuffer(data, dtype="<f4").astype(np.float32)  # copy: writable, native order
    return arr if bool(np.isfinite(arr).all()) else None


_MAGIC = b"SSC"
_FRAME_VERSION = 1
_HEADER = struct.Struct(">3sBII")  # magic, version, payload length, crc32(payload)


def frame(payload: bytes) -> bytes:
    """Wrap a value for Redis so that anything we did not write is detectable."""
    return _HEADER.pack(_MAGIC, _FRAME_VERSION, len(payload), zlib.crc32(payload)) + payload


def unframe(data: Any) -> bytes | None:
    """The payload of a framed value, or None if `data` is not exactly what `frame` produced."""
    if not isinstance(data, (bytes, bytearray)) or len(data) < _HEADER.size:
        return None
    magic, version, length, crc = _HEADER.unpack_from(data)
    payload = bytes(data[_HEADER.size:])
    if magic != _MAGIC or version != _FRAME_VERSION or length != len(payload):
        return None
    return payload if zlib.crc32(payload) == crc else None


# --------------------------------------------------------------------------- local tier

class LocalLRU:
    """Thread-safe LRU bounded by item count and by bytes (len(key) + len(value)), with an
    optional TTL per entry (expired entries are dropped lazily when touched or evicted)."""

    def __init__(self, max_items: int = DEFAULT_LOCAL_MAX_ITEMS,
                 max_bytes: int = DEFAULT_LOCAL_MAX_BYTES, default_ttl_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_items < 0 or max_bytes < 0:
            raise ValueError("max_items and max_bytes must not be negative (0 = no local tier)")
        self.max_items, self.max_bytes, self.default_ttl_s = max_items, max_bytes, default_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = self.evictions = self.expirations = 0

    def _drop(self, key: str) -> None:  # caller holds the lock
        value, _ = self._data.pop(key)
        self._bytes -= len(key) + len(value)

    def _lookup(self, key: str, now: float) -> bytes | None:  # caller holds the lock
        entry = self._data.get(key)
        if entry is None:
            self.misses += 1
            return None
        value, expires = entry
        if expires is not None and now >= expires:
            self._drop(key)
            self.expirations += 1
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._lookup(key, self._clock())

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        with self._lock:
            now = self._clock()
            for key in keys:
                value = self._lookup(key, now)
                if value is not None:
                    out[key] = value
        return out

    def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self.set_many({key: value}, ttl_s)

    def set_many(self, items: Mapping[str, bytes], ttl_s: float | None = None) -> None:
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        if ttl is not None and ttl <= 0:
            return
        with self._lock:
            now = self._clock()
            expires = None if ttl is None else now + ttl
            for key, value in items.items():
                value = bytes(value)
                cost = len(key) + len(value)
                if key in self._data:
                    self._drop(key)
                if cost > self.max_bytes:
                    continue  # would evict everything and still not fit
                # evict per item, so that a huge batch never overshoots the bounds
                while self._data and (len(self._data) >= self.max_items
                                      or self._bytes + cost > self.max_bytes):
                    self._drop(next(iter(self._data)))
                    self.evictions += 1
                self._data[key] = (value, expires)
                self._bytes += cost

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"local_hits": self.hits, "local_misses": self.misses,
                    "local_items": len(self._data), "local_bytes": self._bytes,
                    "local_evictions": self.evictions, "local_expirations": self.expirations}


# --------------------------------------------------------------------------- Redis tier

class CircuitBreaker:
    """closed → (N consecutive failures) → open → (cool-down) → half_open: one trial call;
    its success closes the breaker, its failure re-opens it for another cool-down."""

    def __init__(self, failure_threshold: int = DEFAULT_BREAKER_FAILURES,
                 cooldown_s: float = DEFAULT_BREAKER_COOLDOWN_S, target: str = "redis",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failure_threshold, self.cooldown_s, self.target = failure_threshold, cooldown_s, target
        self._clock = clock
        self._lock = threading.Lock()
        self.state: Literal["closed", "open", "half_open"] = "closed"
        self.failures = 0
        self.opens = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    def allow(self) -> bool:
        with self._lock:
            if self.state == "closed":
                return True
            if self.state == "open" and self._clock() - self._opened_at >= self.cooldown_s:
                self.state = "half_open"
            if self.state == "half_open" and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self.failures = 0
            self._trial_in_flight = False
            if self.state != "closed":
                self.state = "closed"
                logger.info("redis cache %s is back; circuit breaker closed", self.target)

    def record_failure(self, error: BaseException) -> None:
        with self._lock:
            self.failures += 1
            was_trial, self._trial_in_flight = self._trial_in_flight, False
            if self.state == "half_open" and was_trial:
                self.state, self._opened_at = "open", self._clock()
                logger.debug("redis cache %s still failing (%r); breaker re-opened",
                             self.target, error)
            elif self.state == "closed" and self.failures >= self.failure_threshold:
                self.state, self._opened_at = "open", self._clock()
                self.opens += 1
                logger.warning("redis cache %s failed %d times in a row (last: %r); circuit "
                               "breaker open for %.1fs, serving from the local cache only",
                               self.target, self.failures, error, self.cooldown_s)

    def release(self) -> None:
        """The trial call was cancelled before it could tell us anything."""
        with self._lock:
            self._trial_in_flight = False


class RedisTier:
    """Async Redis access with bounded timeouts, a circuit breaker and garbage tolerance.

    Every public method returns normally whatever Redis does. A `redis.asyncio` client is bound
    to one event loop; if used from another loop it is rebuilt (use one loop at a time)."""

    def __init__(self, url: str, *, timeout_ms: float = DEFAULT_REDIS_TIMEOUT_MS,
                 connect_timeout_ms: float | None = None,
                 breaker_failures: int = DEFAULT_BREAKER_FAILURES,
                 breaker_cooldown_s: float = DEFAULT_BREAKER_COOLDOWN_S,
                 default_ttl_s: float = DEFAULT_EMBEDDING_TTL_S, max_connections: int = 32,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._url = url
        self.timeout_s = timeout_ms / 1000.0
        self.connect_timeout_s = (connect_timeout_ms or timeout_ms) / 1000.0
        # Hard deadline per operation: at worst one connect plus one round trip.
        self._deadline_s = self.timeout_s + self.connect_timeout_s
        self.default_ttl_s = default_ttl_s
        self._max_connections = max_connections
        self._client = self._new_client()  # fails fast on a malformed URL
        self._client_loop: asyncio.AbstractEventLoop | None = None
        kw = self._client.connection_pool.connection_kwargs
        target = f"{kw.get('host', kw.get('path', '?'))}:{kw.get('port', '')}"  # no password
        self.breaker = CircuitBreaker(breaker_failures, breaker_cooldown_s, target, clock)
        self._lock = threading.Lock()
        self.hits = self.misses = self.errors = self.garbage = self.skipped = 0
        self.last_op_ok: bool | None = None
        self._last_garbage_log = -math.inf

    def _new_client(self) -> aioredis.Redis:
        # A blocking pool queues bursts (within the deadline) instead of failing them outright.
        pool = aioredis.BlockingConnectionPool.from_url(
            self._url, socket_timeout=self.timeout_s, socket_connect_timeout=self.connect_timeout_s,
            retry=Retry(NoBackoff(), 0),  # retries would multiply the latency bound
            health_check_interval=0, max_connections=self._max_connections,
            timeout=self._deadline_s)
        return aioredis.Redis.from_pool(pool)

    def _client_for_running_loop(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        if self._client_loop is None:
            self._client_loop = loop
        elif self._client_loop is not loop:
            self._client, self._client_loop = self._new_client(), loop
        return self._client

    async def _call(self, op: Callable[[aioredis.Redis], Awaitable[T]]) -> tuple[bool, T | None]:
        """Run `op` under the breaker and the deadline -> (ok, result). Never raises, except
        CancelledError (the caller's own cancellation must propagate)."""
        if not self.breaker.allow():
            with self._lock:
                self.skipped += 1
            return False, None
        try:
            async with asyncio.timeout(self._deadline_s):
                result = await op(self._client_for_running_loop())
        except asyncio.CancelledError:
            self.breaker.release()
            raise
        except Exception as exc:  # noqa: BLE001 - any Redis trouble is a miss, by design
            with self._lock:
                self.errors += 1
                self.last_op_ok = False
            self.breaker.record_failure(exc)
            return False, None
        self.breaker.record_success()
        with self._lock:
            self.last_op_ok = True
        return True, result

    async def mget(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The keys Redis holds valid framed values for; errors and garbage are just absent."""
        wanted = [_check_key(k) for k in dict.fromkeys(keys)]
        if not wanted:
            return {}
        ok, values = await self._call(lambda c: c.mget(wanted))
        if not ok or not isinstance(values, list) or len(values) != len(wanted):
            return {}
        found: dict[str, bytes] = {}
        bad: list[str] = []
        for key, raw in zip(wanted, values):
            if raw is None:
                continue
            payload = unframe(raw)
            if payload is None:
                bad.append(key)
            else:
                found[key] = payload
        now = time.monotonic()
        with self._lock:
            self.hits += len(found)
            self.misses += len(wanted) - len(found)
            self.garbage += len(bad)
            log_garbage = bool(bad) and now - self._last_garbage_log > 10.0
            if log_garbage:
                self._last_garbage_log = now
        if log_garbage:  # rate-limited: a poisoned Redis must not flood the log
            logger.warning("redis cache returned %d unreadable value(s) (e.g. key %s); "
                           "treated as misses", len(bad), bad[0])
        return found

    async def mset(self, items: Mapping[str, bytes], ttl_s: float | None = None) -> bool:
        """Pipelined SET ... EX ttl for every item; False if Redis was skipped or failed."""
        if not items:
            return True
        ex = max(1, math.ceil(self.default_ttl_s if ttl_s is None else ttl_s))
        framed = [(_check_key(k), frame(bytes(v))) for k, v in items.items()]

        async def op(client: aioredis.Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for key, value in framed:
                    pipe.set(key, value, ex=ex)
                return await pipe.execute()

        ok, _ = await self._call(op)
        return ok

    async def ping(self) -> bool:
        ok, _ = await self._call(lambda c: c.ping())
        return ok

    def degraded(self) -> bool:
        return self.breaker.state != "closed" or self.last_op_ok is False

    def stats(self) -> dict[str, int | str]:
        with self._lock:
            return {"redis_hits": self.hits, "redis_misses": self.misses,
                    "redis_errors": self.errors, "redis_garbage": self.garbage,
                    "redis_skipped": self.skipped, "breaker_state": self.breaker.state,
                    "breaker_opens": self.breaker.opens}

    async def aclose(self) -> None:
        try:
            await self._client.aclose()
        except Exception:  # noqa: BLE001 - closing a dead connection is not an error worth raising
            pass


def _check_key(key: str) -> str:
    # Second line of defence: keys come from embedding_key/result_key (prefix + hex digest).
    if not isinstance(key, str) or not _SAFE_KEY.fullmatch(key):
        raise ValueError(f"cache keys must be built with embedding_key/result_key: {key!r:.80}")
    return key


# --------------------------------------------------------------------------- both tiers

class TwoTierCache:
    """Local LRU first, then Redis for the misses (Redis hits are promoted into the LRU).

    Never raises because of Redis. `key_prefix` (+ `namespace`, e.g. one per test) is applied by
    the `embedding_key` / `result_key` methods, so both tiers see the same key."""

    def __init__(self, local: LocalLRU, redis: RedisTier | None = None, *,
                 key_prefix: str = DEFAULT_PREFIX, namespace: str = "") -> None:
        if namespace and not _SAFE_NAMESPACE.fullmatch(namespace):
            raise ValueError(f"namespace must match {_SAFE_NAMESPACE.pattern}: {namespace!r}")
        self.local, self.redis = local, redis
        self.key_prefix = _check_prefix(key_prefix + (f"{namespace}:" if namespace else ""))

    def embedding_key(self, encoder_name: str, onnx_sha256: str, text: str) -> str:
        return embedding_key(encoder_name, onnx_sha256, text, prefix=self.key_prefix)

    def result_key(self, kind: str, payload: Mapping[str, Any], version_token: str) -> str:
        return result_key(kind, payload, version_token, prefix=self.key_prefix)

    async def get_many(self, keys: Iterable[str], *,
                       local_ttl_s: float | None = None) -> dict[str, bytes]:
        """Values found in either tier. `local_ttl_s` bounds how long a Redis hit stays in the
        local tier (default: the LRU's default TTL)."""
        keys = [_check_key(k) for k in dict.fromkeys(keys)]
        found = self.local.get_many(keys)
        if self.redis is not None and len(found) < len(keys):
            from_redis = await self.redis.mget([k for k in keys if k not in found])
            if from_redis:
                self.local.set_many(from_redis, local_ttl_s)
                found.update(from_redis)
        return found

    async def get(self, key: str, *, local_ttl_s: float | None = None) -> bytes | None:
        return (await self.get_many([key], local_ttl_s=local_ttl_s)).get(key)

    async def set_many(self, items: Mapping[str, bytes], ttl_s: float | None = None) -> None:
        """Store in both tiers with the same TTL (None: LRU default / Redis default TTL).
        Awaiting is bounded by the Redis timeout; callers may also run it as a background task."""
        for key in items:
            _check_key(key)
        self.local.set_many(items, ttl_s)
        if self.redis is not None:
            await self.redis.mset(items, ttl_s)

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        await self.set_many({key: value}, ttl_s)

    async def check(self) -> Health:
        """Active probe for readiness endpoints: PING through the breaker, then `health()`."""
        if self.redis is not None:
            await self.redis.ping()
        return self.health()

    def health(self) -> Health:
        if self.redis is None:
            return "disabled"
        return "degraded" if self.redis.degraded() else "ok"

    def stats(self) -> dict[str, int | str]:
        out: dict[str, int | str] = dict(self.local.stats())
        if self.redis is not None:
            out.update(self.redis.stats())
        else:
            out.update(redis_hits=0, redis_misses=0, redis_errors=0, redis_garbage=0,
                       redis_skipped=0, breaker_state="disabled", breaker_opens=0)
        return out

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


def build_cache(redis_url: str | None, *, local_max_items: int = DEFAULT_LOCAL_MAX_ITEMS,
                local_max_bytes: int = DEFAULT_LOCAL_MAX_BYTES,
                local_default_ttl_s: float | None = None,
                redis_timeout_ms: float = DEFAULT_REDIS_TIMEOUT_MS,
                breaker_failures: int = DEFAULT_BREAKER_FAILURES,
                breaker_cooldown_s: float = DEFAULT_BREAKER_COOLDOWN_S,
                redis_default_ttl_s: float = DEFAULT_EMBEDDING_TTL_S,
                key_prefix: str = DEFAULT_PREFIX, namespace: str = "") -> TwoTierCache:
    """The cache from settings; an unset or empty `redis_url` means local LRU only."""
    local = LocalLRU(local_max_items, local_max_bytes, local_default_ttl_s)
    tier = None
    if redis_url:
        tier = RedisTier(redis_url, timeout_ms=redis_timeout_ms, breaker_failures=breaker_failures,
                         breaker_cooldown_s=breaker_cooldown_s, default_ttl_s=redis_default_ttl_s)
    return TwoTierCache(local, tier, key_prefix=key_prefix, namespace=namespace)

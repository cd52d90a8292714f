"""Text validation, embedding cache and micro-batched encoding, combined."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from models.batcher import QueueFull

from ..context import timings
from ..errors import ApiError
from ..settings import Settings
from .encoders import EncoderPool, LoadedEncoder

_VALUE_HEADER = struct.Struct("<IB")   # token count, truncated flag; then float32 vector


@dataclass
class Embedded:
    model: str
    vectors: np.ndarray
    token_counts: list[int]
    truncated: list[bool]

    @property
    def total_tokens(self) -> int:
        return int(sum(self.token_counts))


class EmbeddingService:
    def __init__(self, pool: EncoderPool, settings: Settings, cache: Any | None = None) -> None:
        self.pool = pool
        self.settings = settings
        self.cache = cache

    # -- validation --------------------------------------------------------------------
    def check_texts(self, texts: Sequence[Any], field: str = "input",
                    limit: int | None = None) -> tuple[list[str], list[bool]]:
        """Validate a list of texts; apply the character limit.  Returns texts + cut flags."""
        limit = limit or self.settings.max_texts_per_request
        if len(texts) == 0:
            raise ApiError(422, "empty_input", f"{field} must contain at least one text")
        if len(texts) > limit:
            raise ApiError(413, "too_many_texts",
                           f"{field} has {len(texts)} texts; at most {limit} per request",
                           {"count": len(texts), "limit": limit})
        out: list[str] = []
        cut: list[bool] = []
        max_chars = self.settings.max_text_chars
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ApiError(422, "invalid_text", f"{field}[{i}] must be a string")
            if "\x00" in t:
                raise ApiError(422, "invalid_text", f"{field}[{i}] contains a NUL character")
            if not t.strip():
                raise ApiError(422, "empty_text", f"{field}[{i}] is empty or only whitespace",
                               {"index": i})
            if len(t) > max_chars:
                if self.settings.overlong_text == "reject":
                    raise ApiError(413, "text_too_long",
                                   f"{field}[{i}] has {len(t)} characters; the limit is {max_chars}",
                                   {"index": i, "chars": len(t), "limit": max_chars})
                t = t[:max_chars]
                cut.append(True)
            else:
                cut.append(False)
            out.append(t)
        return out, cut

    # -- encoding ----------------------------------------------------------------------
    def encoder(self, model: str | None) -> LoadedEncoder:
        return self.pool.get(model)

    async def embed(self, model: str | None, texts: Sequence[str],
                    char_cut: Sequence[bool] | None = None) -> Embedded:
        le = self.pool.get(model)
        n = len(texts)
        dim = le.encoder.dim
        vectors = np.zeros((n, dim), dtype=np.float32)
        counts = [0] * n
        trunc = [False] * n
        todo = list(range(n))
        keys: list[str] = []
        t = timings()
        if self.cache is not None:
            keys = [self.cache.embedding_key(le.name, le.encoder.onnx_sha256, s) for s in texts]
            found = await self.cache.get_many(list(dict.fromkeys(keys)))
            todo = []
            for i, k in enumerate(keys):
                decoded = _decode(found.get(k), dim)
                if decoded is None:
                    todo.append(i)
                else:
                    vectors[i], counts[i], trunc[i] = decoded
            t.cache_hits += n - len(todo)
            t.cache_misses += len(todo)
        if todo:
            # encode each distinct missing text once
            uniq: dict[str, list[int]] = {}
            for i in todo:
                uniq.setdefault(texts[i], []).append(i)
            try:
                res = await le.batcher.encode(list(uniq))
            except QueueFull as exc:
                raise ApiError(429, "overloaded", str(exc), {"queued": exc.queued, "limit": exc.limit},
                               headers={"Retry-After": str(int(np.ceil(exc.retry_after_s)))}) from exc
            t.queue_ms += res.queue_ms
            t.inference_ms += res.inference_ms
            t.batch_size = max(t.batch_size, res.batch_size)
            to_store: dict[str, bytes] = {}
            for row, idxs in enumerate(uniq.values()):
                for i in idxs:
                    vectors[i] = res.vectors[row]
                    counts[i] = res.token_counts[row]
                    trunc[i] = res.truncated[row]
                if keys:
                    to_store[keys[idxs[0]]] = _encode(res.vectors[row], res.token_counts[row],
                                                      res.truncated[row])
            if to_store and self.cache is not None:
                await self.cache.set_many(to_store, ttl_s=self.settings.cache_embedding_ttl_s)
        t.encoded = True
        if char_cut is not None:
            trunc = [a or bool(b) for a, b in zip(trunc, char_cut)]
        return Embedded(model=le.name, vectors=vectors, token_counts=counts, truncated=trunc)


def _encode(vec: np.ndarray, tokens: int, truncated: bool) -> bytes:
    return _VALUE_HEADER.pack(int(tokens), 1 if truncated else 0) + \
        np.ascontiguousarray(vec, dtype=np.float32).tobytes()


def _decode(blob: bytes | None, dim: int) -> tuple[np.ndarray, int, bool] | None:
    if blob is None or len(blob) != _VALUE_HEADER.size + 4 * dim:
        return None
    tokens, flag = _VALUE_HEADER.unpack_from(blob)
    vec = np.frombuffer(blob, dtype=np.float32, offset=_VALUE_HEADER.size, count=dim)
    if not np.all(np.isfinite(vec)):
        return None
    return vec.copy(), int(tokens), bool(flag)


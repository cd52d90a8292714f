"""Text validation, embedding cache and micro-batched encoding, combined."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from models.batcher import QueueFull

from ..cache import decode_vector, encode_vector
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
    # model="auto": per text, the encoder that embedded it and the routed domain + confidence
    routes: list[dict[str, Any]] | None = None

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

    def dimension(self, model: str | None) -> int:
        """Output dimension of ``model``; for "auto", the router's base encoder dimension
        (every domain encoder is adapted from it, so they agree)."""
        if model == "auto":
            if self.pool.router is None:
                raise ApiError(503, "model_not_available", "model 'auto' needs the domain router")
            return self.pool.get(self.pool.router.base).encoder.dim
        return self.pool.get(model).encoder.dim

    async def embed(self, model: str | None, texts: Sequence[str],
                    char_cut: Sequence[bool] | None = None, joint: bool = True) -> Embedded:
        """Embed ``texts``.  ``model="auto"`` routes to domain encoders: with ``joint`` (the
        default, for anything that compares texts) one encoder is chosen for the whole request
        from the mean domain probabilities; without it each text gets its own encoder."""
        if model == "auto":
            return await self._embed_auto(texts, char_cut, joint)
        return await self._embed_one(model, texts, char_cut)

    async def _embed_auto(self, texts: Sequence[str], char_cut: Sequence[bool] | None,
                          joint: bool) -> Embedded:
        router = self.pool.router
        if router is None:
            raise ApiError(503, "model_not_available",
                           "model 'auto' needs the domain router; build it with: python -m models build --all",
                           {"available": sorted(self.pool.loaded)})
        base = await self._embed_one(router.base, texts, char_cut)
        probs = router.probabilities(base.vectors)
        labels = list(router.labels)
        if joint:
            mean = probs.mean(axis=0)
            choice = [int(mean.argmax())] * len(texts)
            conf = [float(mean.max())] * len(texts)
        else:
            choice = [int(i) for i in probs.argmax(axis=1)]
            conf = [float(probs[r, i]) for r, i in enumerate(choice)]
        names = [self.pool.domain_encoder(labels[c]) for c in choice]
        routes = [{"model": n, "domain": labels[c], "confidence": round(p, 4)}
                  for n, c, p in zip(names, choice, conf)]
        vectors = np.zeros_like(base.vectors)
        counts, trunc = list(base.token_counts), list(base.truncated)
        for name in dict.fromkeys(names):
            idx = [i for i, n in enumerate(names) if n == name]
            if name == router.base:
                vectors[idx] = base.vectors[idx]
                continue
            sub = await self._embed_one(name, [texts[i] for i in idx],
                                        [char_cut[i] for i in idx] if char_cut is not None else None)
            for row, i in enumerate(idx):
                vectors[i], counts[i], trunc[i] = sub.vectors[row], sub.token_counts[row], sub.truncated[row]
        model = names[0] if len(set(names)) == 1 else "auto"
        return Embedded(model=model, vectors=vectors, token_counts=counts, truncated=trunc, routes=routes)

    async def _embed_one(self, model: str | None, texts: Sequence[str],
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
    return _VALUE_HEADER.pack(int(tokens), 1 if truncated else 0) + encode_vector(vec)


def _decode(blob: bytes | None, dim: int) -> tuple[np.ndarray, int, bool] | None:
    if blob is None or len(blob) < _VALUE_HEADER.size:
        return None
    tokens, flag = _VALUE_HEADER.unpack_from(blob)
    vec = decode_vector(blob[_VALUE_HEADER.size:], dim)
    return None if vec is None else (vec, int(tokens), bool(flag))

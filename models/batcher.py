"""Dynamic micro-batching: the queue -> batch -> backend pipeline.

Concurrent requests put their tokenised texts on one queue per encoder.  A single worker
takes texts off the queue in arrival order up to a token budget, sorts them by length,
splits them into batches whose *padded* size (longest x count) fits the budget, runs one
ONNX call per batch in a worker thread (onnxruntime releases the GIL, so the event loop keeps
serving) and scatters the rows back to the requests they came from.

The first text of a batch waits at most ``max_wait_ms`` for company, and only when the worker
is idle: under load, texts that arrived during the previous inference form the next batch at
once.  The queue is bounded in texts; when it is full, ``QueueFull`` tells the caller to
answer 429 with a Retry-After instead of letting memory and latency grow without bound.
"""
from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .encoder import OnnxEncoder, Tokenized, split_sorted


class QueueFull(Exception):
    def __init__(self, queued: int, limit: int, retry_after_s: float) -> None:
        super().__init__(f"encoder queue is full ({queued} texts queued, limit {limit})")
        self.queued = queued
        self.limit = limit
        self.retry_after_s = retry_after_s


@dataclass
class BatchResult:
    vectors: np.ndarray
    token_counts: list[int]
    truncated: list[bool]
    queue_ms: float          # enqueue -> start of this request's first batch
    inference_ms: float      # time in ONNX calls that served this request
    batch_size: int          # largest batch this request's texts were part of


@dataclass
class _Request:
    items: list[Tokenized]
    future: asyncio.Future[BatchResult]
    enqueued: float
    out: np.ndarray
    remaining: int
    started: float | None = None
    inference_s: float = 0.0
    batch_size: int = 0


@dataclass
class BatcherStats:
    batches: int = 0
    texts: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    inference_s: float = 0.0
    rejected: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)


class MicroBatcher:
    def __init__(self, encoder: OnnxEncoder, max_batch_tokens: int = 8192,
                 max_wait_ms: float = 2.0, queue_max_texts: int = 4096, enabled: bool = True) -> None:
        self.encoder = encoder
        self.max_batch_tokens = max(max_batch_tokens, encoder.max_length)
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_max_texts = queue_max_texts
        self.enabled = enabled
        self.stats = BatcherStats()
        self._queue: collections.deque[tuple[_Request, int]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{encoder.name}")
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._recent_batch_s = 0.05  # moving estimate for Retry-After

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        if self.enabled and self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.encoder.name}")

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
            self._worker = None
        self._executor.shutdown(wait=True)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # -- public API --------------------------------------------------------------------
    async def encode(self, texts: Sequence[str]) -> BatchResult:
        loop = asyncio.get_running_loop()
        if len(texts) > 32:
            items = await loop.run_in_executor(None, self.encoder.tokenize, list(texts))
        else:
            items = self.encoder.tokenize(texts)
        return await self.encode_tokenized(items)

    async def encode_tokenized(self, items: list[Tokenized]) -> BatchResult:
        loop = asyncio.get_running_loop()
        n = len(items)
        if n == 0:
            return BatchResult(np.zeros((0, self.encoder.dim), np.float32), [], [], 0.0, 0.0, 0)
        if not self.enabled:
            return await self._encode_direct(items)
        queued = len(self._queue)
        if queued and queued + n > self.queue_max_texts:
            self.stats.rejected += 1
            per_text = self._recent_batch_s / max(1, self.max_batch_tokens // 32)
            raise QueueFull(queued, self.queue_max_texts, max(1.0, queued * per_text))
        req = _Request(items=items, future=loop.create_future(), enqueued=time.perf_counter(),
                       out=np.zeros((n, self.encoder.dim), np.float32), remaining=n)
        self._queue.extend((req, i) for i in range(n))
        self._wakeup.set()
        return await req.future

    async def _encode_direct(self, items: list[Tokenized]) -> BatchResult:
        """Batching off: this request alone, one call per budget-sized chunk (the baseline)."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        out = np.zeros((len(items), self.encoder.dim), np.float32)
        infer = 0.0
        size = 0
        for batch in self.encoder.plan_batches(items):
            t1 = time.perf_counter()
            out[batch] = await loop.run_in_executor(self._executor, self.encoder.run_tokenized,
                                                    [items[i] for i in batch])
            infer += time.perf_counter() - t1
            size = max(size, len(batch))
            self._account(len(batch), [items[i] for i in batch], time.perf_counter() - t1)
        return BatchResult(out, [t.length for t in items], [t.truncated for t in items],
                           queue_ms=0.0, inference_ms=infer * 1000, batch_size=size)

    # -- worker ------------------------------------------------------------------------
    def _take(self) -> list[tuple[_Request, int]]:
        """Texts in arrival order up to the token budget (always at least one)."""
        taken: list[tuple[_Request, int]] = []
        tokens = 0
        while self._queue:
            req, i = self._queue[0]
            length = req.items[i].length
            if taken and tokens + length > self.max_batch_tokens:
                break
            taken.append(self._queue.popleft())
            tokens += length
        return taken

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Idle worker: give the first text a short chance to find company.
            oldest = self._queue[0][0].enqueued
            pending_tokens = sum(r.items[i].length for r, i in self._queue)
            wait = oldest + self.max_wait_s - time.perf_counter()
            if wait > 0 and pending_tokens < self.max_batch_tokens and not self._closing:
                await asyncio.sleep(wait)
            taken = self._take()
            taken.sort(key=lambda ri: ri[0].items[ri[1]].length)
            lengths = [r.items[i].length for r, i in taken]
            for start, end in split_sorted(lengths, self.max_batch_tokens):
                await self._infer(loop, taken[start:end])

    async def _infer(self, loop: asyncio.AbstractEventLoop, chunk: list[tuple[_Request, int]]) -> None:
        t0 = time.perf_counter()
        items = [r.items[i] for r, i in chunk]
        for r, _ in chunk:
            if r.started is None:
                r.started = t0
        try:
            vecs = await loop.run_in_executor(self._executor, self.encoder.run_tokenized, items)
        except Exception as exc:  # an inference failure fails the requests it served, not the worker
            for r, _ in chunk:
                if not r.future.done():
                    r.future.set_exception(exc)
            return
        dt = time.perf_counter() - t0
        self._recent_batch_s = 0.8 * self._recent_batch_s + 0.2 * dt
        self._account(len(chunk), items, dt)
        for row, (r, i) in enumerate(chunk):
            if r.future.done():
                continue
            r.out[i] = vecs[row]
            r.remaining -= 1
            r.batch_size = max(r.batch_size, len(chunk))
        for r in {id(r): r for r, _ in chunk}.values():
            r.inference_s += dt
            if r.remaining == 0 and not r.future.done():
                r.future.set_result(BatchResult(
                    r.out, [t.length for t in r.items], [t.truncated for t in r.items],
                    queue_ms=((r.started or t0) - r.enqueued) * 1000,
                    inference_ms=r.inference_s * 1000, batch_size=r.batch_size))

    def _account(self, size: int, items: list[Tokenized], dt: float) -> None:
        s = self.stats
        s.batches += 1
        s.texts += size
        s.real_tokens += sum(t.length for t in items)
        s.padded_tokens += max(t.length for t in items) * size
        s.inference_s += dt
        s.batch_sizes[size] += 1

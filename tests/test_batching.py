"""Micro-batching behaviour against the real minilm encoder (no timing assertions)."""
from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from models.batcher import MicroBatcher, QueueFull
from models.encoder import OnnxEncoder


@pytest.fixture(scope="module")
def encoder(built_minilm):
    return OnnxEncoder(built_minilm, "int8", intra_op_threads=1)


def test_concurrent_requests_coalesce(encoder):
    async def main():
        b = MicroBatcher(encoder, max_batch_tokens=4096, max_wait_ms=20)
        b.start()
        texts = [f"sentence number {i} about something" for i in range(40)]
        results = await asyncio.gather(*[b.encode([t]) for t in texts])
        await b.stop()
        return b, texts, results

    b, texts, results = asyncio.run(main())
    assert b.stats.texts == 40
    assert b.stats.batches < 10                    # 40 requests did not make 40 ONNX calls
    assert max(r.batch_size for r in results) > 4
    direct = encoder.encode(texts).vectors
    got = np.vstack([r.vectors for r in results])
    assert ((got * direct).sum(1) > 0.97).all()    # each request got its own row back


def test_results_scattered_to_right_requests(encoder):
    async def main():
        b = MicroBatcher(encoder, max_batch_tokens=512, max_wait_ms=5)
        b.start()
        reqs = [["alpha beta"], ["the stock market crashed today", "dogs"], ["w " * 120], ["cats and kittens"]]
        out = await asyncio.gather(*[b.encode(r) for r in reqs])
        await b.stop()
        return reqs, out

    reqs, out = asyncio.run(main())
    ref = OnnxEncoder(encoder.built, "fp32")
    for texts, res in zip(reqs, out):
        assert res.vectors.shape == (len(texts), 384)
        assert ((res.vectors * ref.encode(texts).vectors).sum(1) > 0.97).all()


def test_budget_splits_oversized_batches(encoder):
    async def main():
        b = MicroBatcher(encoder, max_batch_tokens=512, max_wait_ms=1)
        b.start()
        res = await b.encode(["lorem ipsum dolor sit amet " * 8] * 60)
        await b.stop()
        return b, res

    b, res = asyncio.run(main())
    assert res.vectors.shape == (60, 384)
    assert b.stats.batches >= 5
    assert all(size * 1 <= 512 for size in b.stats.batch_sizes)   # rows per call bounded
    assert b.stats.padded_tokens <= 512 * b.stats.batches


def test_queue_full_raises(encoder):
    async def main():
        b = MicroBatcher(encoder, max_batch_tokens=256, max_wait_ms=1, queue_max_texts=50)
        # worker not started yet: the first request stays queued
        first = asyncio.ensure_future(b.encode_tokenized(encoder.tokenize(["keep the queue busy"] * 40)))
        await asyncio.sleep(0)
        assert b.queue_depth == 40
        with pytest.raises(QueueFull) as exc:
            await b.encode(["more"] * 20)
        assert exc.value.retry_after_s >= 1 and b.stats.rejected == 1
        b.start()
        assert (await first).vectors.shape == (40, 384)   # admitted work still completes
        await b.stop()

    asyncio.run(main())


def test_batching_off_is_one_call_per_request(encoder):
    async def main():
        b = MicroBatcher(encoder, enabled=False)
        await asyncio.gather(*[b.encode([f"text {i}"]) for i in range(10)])
        return b

    b = asyncio.run(main())
    assert b.stats.batches == 10 and set(b.stats.batch_sizes) == {1}


def test_http_429_with_retry_after(tmp_path, built_minilm):
    from app.main import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings(tmp_path, queue_max_texts=8, batch_max_tokens=256, intra_op_threads=1))

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
                texts = [f"request {i} with a few words in it" for i in range(6)]
                rs = await asyncio.gather(*[c.post("/v1/embeddings", json={"input": texts}) for _ in range(12)])
                return rs

    rs = asyncio.run(main())
    codes = [r.status_code for r in rs]
    assert 200 in codes and 429 in codes
    limited = next(r for r in rs if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["type"] == "overloaded"

"""Every request limit (settings) is enforced with a clear 413/422 before any expensive work.

"Before any expensive work" is checked from the outside: a request that reached the encoder
carries ``X-Inference-Time-Ms``; a rejected one must not.  The app here runs with small limits.
"""
from __future__ import annotations

import time
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings

LIMITS = dict(max_body_bytes=64 * 1024, max_texts_per_request=8, max_text_chars=200,
              overlong_text="reject", max_top_k=20, max_filter_depth=2, max_filter_conditions=4,
              max_documents_per_upsert=4, max_pairs_texts=6, max_concurrent_jobs=1)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, built_minilm: object) -> Iterator[TestClient]:
    from app.main import create_app

    app = create_app(make_settings(tmp_path_factory.mktemp("limits"), **LIMITS))
    with TestClient(app) as c:
        assert c.put("/v1/collections/lim", json={}).status_code == 201
        r = c.post("/v1/collections/lim/documents", json={"documents": [
            {"id": f"d{i}", "text": f"document {i}", "metadata": {"n": i}} for i in range(4)]})
        assert r.status_code == 200, r.text
        yield c


def _rejected(r, status: int, kind: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert "x-inference-time-ms" not in r.headers, "the encoder ran for a rejected request"
    err = r.json()["error"]
    if kind:
        assert err["type"] == kind, err
    assert err["message"]
    return err


def test_body_size_limit_by_content_length(small):
    body = b'{"input": "' + b"a" * (64 * 1024) + b'"}'
    err = _rejected(small.post("/v1/embeddings", content=body,
                               headers={"content-type": "application/json"}), 413, "payload_too_large")
    assert err["details"]["limit"] == 64 * 1024


def test_body_size_limit_when_streamed_without_length(small):
    def chunks():
        yield b'{"input": "'
        for _ in range(20):
            yield b"a" * 8192
        yield b'"}'
    r = small.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    _rejected(r, 413, "payload_too_large")


def test_texts_per_request(small):
    err = _rejected(small.post("/v1/embeddings", json={"input": ["a"] * 9}), 413, "too_many_texts")
    assert err["details"] == {"count": 9, "limit": 8}
    _rejected(small.post("/v1/similarity", json={"texts_a": ["a"] * 5, "texts_b": ["b"] * 5}), 413)
    _rejected(small.post("/v1/collections/lim/search/batch",
                         json={"searches": [{"query": "q"}] * 9}), 413, "too_many_searches")
    assert small.post("/v1/embeddings", json={"input": ["a"] * 8}).status_code == 200


def test_pairs_texts(small):
    _rejected(small.post("/v1/similarity/pairs", json={"texts": ["t"] * 7}), 413, "too_many_texts")


def test_text_chars_reject_mode(small):
    err = _rejected(small.post("/v1/embeddings", json={"input": ["ok", "x" * 201]}), 413, "text_too_long")
    assert err["details"] == {"index": 1, "chars": 201, "limit": 200}
    _rejected(small.post("/v1/collections/lim/search", json={"query": "x" * 201}), 413, "text_too_long")
    _rejected(small.post("/v1/collections/lim/documents",
                         json={"documents": [{"text": "y" * 201}]}), 413, "text_too_long")


def test_text_chars_truncate_mode_is_flagged(client):
    limit = client.app.state.svc.settings.max_text_chars
    r = client.post("/v1/embeddings", json={"input": ["short", "z " * (limit // 2 + 1)]})
    assert r.status_code == 200
    assert [d["truncated"] for d in r.json()["data"]] == [False, True]


def test_top_k(small):
    err = _rejected(small.post("/v1/collections/lim/search", json={"query": "q", "top_k": 21}),
                    422, "top_k_too_large")
    assert err["details"]["limit"] == 20
    _rejected(small.post("/v1/collections/lim/recommend", json={"positive": ["d0"], "top_k": 21}), 422)
    _rejected(small.post("/v1/collections/lim/search", json={"query": "q", "top_k": 10 ** 30}), 422)
    _rejected(small.post("/v1/collections/lim/search", json={"query": "q", "top_k": 0}), 422)


@pytest.mark.parametrize("flt,what", [
    ({"$not": {"$not": {"$not": {"n": 1}}}}, "deep"),
    ({"$and": [{"$or": [{"$not": {"n": 1}}]}]}, "deep"),
    ({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}, "conditions"),
    ({"$or": [{"n": i} for i in range(5)]}, "conditions"),
])
def test_filter_depth_and_size_before_encoding(small, flt, what):
    err = _rejected(small.post("/v1/collections/lim/search", json={"query": "some text", "filter": flt}),
                    400, "invalid_filter")
    assert ("deep" in err["message"] or "depth" in err["message"]) if what == "deep" \
        else "conditions" in err["message"]
    _rejected(small.post("/v1/collections/lim/documents/delete", json={"filter": flt}), 400, "invalid_filter")
    _rejected(small.post("/v1/collections/lim/recommend", json={"positive": ["d0"], "filter": flt}), 400)
    # clustering a collection checks the same settings before it queues a job
    _rejected(small.post("/v1/cluster", json={"collection": "lim", "filter": flt}), 400, "invalid_filter")


def test_filter_within_limits_works(small):
    r = small.post("/v1/collections/lim/search", json={"query": "document", "top_k": 4,
                                                      "filter": {"$or": [{"n": 1}, {"n": 2}]}})
    assert r.status_code == 200 and {h["id"] for h in r.json()["results"]} == {"d1", "d2"}


def test_documents_per_upsert(small):
    docs = [{"id": f"u{i}", "text": f"text {i}"} for i in range(5)]
    err = _rejected(small.post("/v1/collections/lim/documents", json={"documents": docs}),
                    413, "too_many_documents")
    assert err["details"]["limit"] == 4
    assert small.get("/v1/collections/lim").json()["count"] == 4  # nothing was written


def test_concurrent_jobs_are_bounded(small):
    texts = [f"sentence number {i} about topic {i % 3}" for i in range(8)]
    ids = []
    for _ in range(3):
        r = small.post("/v1/cluster", json={"texts": texts, "k": 2, "background": True})
        assert r.status_code == 202, r.text
        ids.append(r.json()["job_id"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        # one GET /v1/jobs is one consistent snapshot (three GETs could straddle a hand-over)
        snapshot = {j["id"]: j["status"] for j in small.get("/v1/jobs").json()["jobs"]}
        states = [snapshot[j] for j in ids]
        assert states.count("running") <= 1, states
        if all(s in ("succeeded", "failed") for s in states):
            break
        time.sleep(0.05)
    assert states == ["succeeded"] * 3, states

"""GET /metrics, scraped after real traffic against the real app and the real minilm encoder."""
from __future__ import annotations

from typing import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_settings


def scrape(client: TestClient) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted label items: value}}"""
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(m: dict, name: str, **labels: str) -> float:
    return m[name][tuple(sorted(labels.items()))]


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory, built_minilm) -> Iterator[TestClient]:
    from app.main import create_app

    app = create_app(make_settings(tmp_path_factory.mktemp("metrics")))
    with TestClient(app) as c:
        yield c


def test_request_encoder_and_cache_metrics_after_traffic(app_client: TestClient) -> None:
    c = app_client
    texts = ["metrics are scraped by prometheus", "a second distinct sentence", "and a third one"]
    for _ in range(3):  # the same texts thrice: 1 encode, then local cache hits
        assert c.post("/v1/embeddings", json={"input": texts}).status_code == 200
    assert c.post("/v1/similarity", json={"source": "orbit", "targets": ["space", "church"]}).status_code == 200
    assert c.post("/v1/embeddings", json={"input": 12}).status_code == 422
    assert c.get("/no/such/route").status_code == 404

    m = scrape(c)
    assert value(m, "semsearch_http_requests_total", method="POST", route="/v1/embeddings", status="200") == 3
    assert value(m, "semsearch_http_requests_total", method="POST", route="/v1/embeddings", status="422") == 1
    assert value(m, "semsearch_http_requests_total", method="POST", route="/v1/similarity", status="200") == 1
    assert value(m, "semsearch_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert value(m, "semsearch_http_request_duration_seconds_count",
                 method="POST", route="/v1/embeddings", status="200") == 3
    assert value(m, "semsearch_http_request_duration_seconds_bucket",
                 method="POST", route="/v1/embeddings", status="200", le="+Inf") == 3
    assert value(m, "semsearch_http_request_duration_seconds_sum",
                 method="POST", route="/v1/embeddings", status="200") > 0

    # the encoder ran for the first embeddings request and for similarity (the rest were cached)
    assert value(m, "semsearch_encoder_queue_wait_seconds_count", route="/v1/embeddings") == 1
    assert value(m, "semsearch_encoder_request_inference_seconds_count", route="/v1/similarity") == 1
    assert value(m, "semsearch_encoder_request_inference_seconds_sum", route="/v1/embeddings") > 0
    assert value(m, "semsearch_encoder_queue_depth", model="minilm") == 0
    batches = value(m, "semsearch_encoder_batches_total", model="minilm")
    encoded = value(m, "semsearch_encoder_texts_total", model="minilm")
    assert batches >= 2 and encoded == 3 + 3  # 3 texts + source + 2 targets, each encoded once
    assert value(m, "semsearch_encoder_batch_size_count", model="minilm") == batches
    assert value(m, "semsearch_encoder_batch_size_sum", model="minilm") == encoded
    assert value(m, "semsearch_encoder_batch_size_bucket", model="minilm", le="+Inf") == batches
    assert value(m, "semsearch_encoder_inference_seconds_total", model="minilm") > 0

    assert value(m, "semsearch_cache_hits_total", tier="local") >= 6    # 2 repeats x 3 texts
    assert value(m, "semsearch_cache_misses_total", tier="local") >= 6
    assert value(m, "semsearch_cache_hits_total", tier="redis") == 0      # no Redis configured
    assert value(m, "semsearch_cache_redis_breaker_state", state="disabled") == 1
    assert value(m, "semsearch_ready") == 1

    # the scrape itself is a request like any other
    m2 = scrape(c)
    assert value(m2, "semsearch_http_requests_total", method="GET", route="/metrics", status="200") >= 1


def test_collection_sizes(app_client: TestClient) -> None:
    c = app_client
    r = c.put("/v1/collections/metrics_docs", json={"index": {"type": "flat"}, "metric": "cosine"})
    if r.status_code == 404 and r.json()["error"]["type"] == "not_found":
        pytest.skip("no collections API in this build")
    assert r.status_code in (200, 201), r.text
    docs = [{"id": f"d{i}", "text": t, "metadata": {"i": i}}
            for i, t in enumerate(["rockets reach orbit", "a sermon on faith", "stock prices fell"])]
    assert c.post("/v1/collections/metrics_docs/documents", json={"documents": docs}).status_code == 200
    m = scrape(c)
    assert value(m, "semsearch_collection_documents", collection="metrics_docs") == 3
    assert value(m, "semsearch_collection_index_vectors", collection="metrics_docs") == 3
    assert value(m, "semsearch_collection_index_bytes", collection="metrics_docs") > 0
    assert value(m, "semsearch_collections") >= 1
    assert value(m, "semsearch_http_requests_total", method="POST",
                 route="/v1/collections/{name}/documents", status="200") == 1


def test_each_app_has_its_own_registry(tmp_path, built_minilm) -> None:
    """Two apps in one process: no duplicate-registration error, and independent counts."""
    from app.main import create_app

    a = create_app(make_settings(tmp_path / "a"))
    b = create_app(make_settings(tmp_path / "b"))
    with TestClient(a) as ca, TestClient(b) as cb:
        for _ in range(2):
            ca.get("/healthz")
        cb.get("/healthz")
        assert value(scrape(ca), "semsearch_http_requests_total", method="GET", route="/healthz", status="200") == 2
        assert value(scrape(cb), "semsearch_http_requests_total", method="GET", route="/healthz", status="200") == 1


def test_openmetrics_on_request(app_client: TestClient) -> None:
    r = app_client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


def test_collector_tolerates_missing_or_odd_state() -> None:
    """A scrape never fails because a subsystem is absent or has an unexpected shape (jobs and
    collections are optional parts of the service state)."""
    from types import SimpleNamespace

    from app.metrics import ServiceMetrics

    class Jobs:  # a job runner that lists job objects with a status
        def list(self):
            return [SimpleNamespace(status="running"), SimpleNamespace(status="done"),
                    SimpleNamespace(status="done")]

    class Broken:
        def stats(self):
            raise RuntimeError("boom")

    for svc in (None, SimpleNamespace(), SimpleNamespace(ready=True, pool=None, cache=Broken(),
                                                         extras={"jobs": Jobs()})):
        body, _ = ServiceMetrics(lambda svc=svc: svc).render()
        text = body.decode()
        if svc is not None and hasattr(svc, "extras"):
            assert 'semsearch_jobs{state="done"} 2.0' in text
            assert 'semsearch_jobs{state="running"} 1.0' in text


def test_background_jobs_by_state(app_client: TestClient) -> None:
    """Clustering a collection runs as a background job; the scrape counts jobs by state."""
    import time

    c = app_client
    m = scrape(c)
    if "semsearch_jobs" not in m:
        pytest.skip("no background job manager in this build")
    before = m["semsearch_jobs"].get((("state", "succeeded"),), 0.0)
    c.put("/v1/collections/metrics_jobs", json={"index": {"type": "flat"}})
    docs = [{"id": f"j{i}", "text": t} for i, t in enumerate(
        ["rockets reach orbit", "the shuttle launched", "a sermon on faith", "prayer in church"])]
    assert c.post("/v1/collections/metrics_jobs/documents", json={"documents": docs}).status_code == 200
    r = c.post("/v1/cluster", json={"collection": "metrics_jobs", "algorithm": "kmeans", "k": 2})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 60
    while c.get(f"/v1/jobs/{job_id}").json()["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    m = scrape(c)
    assert value(m, "semsearch_jobs", state="succeeded") == before + 1
    assert value(m, "semsearch_jobs", state="running") == 0

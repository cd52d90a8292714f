"""Kill -9 test: a real server process is SIGKILLed while a client is ingesting batches.

Every batch whose upsert was acknowledged must be present and searchable after restart, and
no batch may be partly visible.
"""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.e2e_server import ServerProcess

pytestmark = pytest.mark.e2e

BATCH = 40


def _batch(k: int) -> list[dict]:
    return [{"id": f"b{k}-d{i}", "text": f"batch {k} document {i}: notes on subject {(k * BATCH + i) % 97}",
             "metadata": {"batch": k, "i": i}} for i in range(BATCH)]


def test_sigkill_mid_ingest_loses_nothing_acknowledged(built_minilm, tmp_path):
    srv = ServerProcess(data_dir=tmp_path / "data", env={"INDEX_SNAPSHOT_EVERY_WRITES": "200"})
    srv.start()
    acked: list[int] = []
    sent: list[int] = []
    stop = threading.Event()
    errors: list[str] = []

    def ingest() -> None:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.put("/v1/collections/crash", json={"model": "minilm", "index": {"type": "hnsw"}}).status_code == 201
            k = 0
            while not stop.is_set():
                sent.append(k)
                try:
                    r = c.post("/v1/collections/crash/documents", json={"documents": _batch(k)})
                except httpx.HTTPError:
                    return            # the server died under us: this batch is unacknowledged
                if r.status_code != 200:
                    errors.append(r.text)
                    return
                acked.append(k)
                k += 1

    t = threading.Thread(target=ingest)
    t.start()
    deadline = time.monotonic() + 120
    while len(acked) < 12 and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.02)
    time.sleep(0.05)             # land the kill in the middle of the next upsert
    srv.kill()
    stop.set()
    t.join(30)
    assert not errors, errors
    assert len(acked) >= 12

    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            info = c.get("/v1/collections/crash").json()
            count = info["count"]
            assert count % BATCH == 0, f"partial batch visible: {count} documents"
            assert count >= len(acked) * BATCH
            assert count <= len(sent) * BATCH
            for k in acked:
                r = c.post("/v1/collections/crash/search",
                           json={"query": f"batch {k} document 3", "top_k": BATCH, "filter": {"batch": k},
                                 "include": []})
                ids = {h["id"] for h in r.json()["results"]}
                assert ids == {d["id"] for d in _batch(k)}, f"batch {k} not fully searchable"
            # the index answers the exact document for its own text, unfiltered
            k = acked[-1]
            r = c.post("/v1/collections/crash/search", json={"query": _batch(k)[5]["text"], "top_k": 1})
            assert r.json()["results"][0]["id"] == f"b{k}-d5"
            # and ingestion continues after recovery
            r = c.post("/v1/collections/crash/documents", json={"documents": _batch(10_000)})
            assert r.status_code == 200
    finally:
        srv.close()

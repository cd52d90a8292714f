"""Fault injection with real processes: Redis stopped and restarted under load, SIGTERM under
load (graceful drain, writes committed, index snapshot flushed), and a corrupt or truncated
index snapshot at start-up (detected by its checksum, rebuilt from the document store).
Disk full / read-only storage: tests/test_faults_disk.py."""
from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from index.snapshot import read_snapshot
from tests.e2e_server import ServerProcess
from tests.faultload import Load, Outcome

pytestmark = pytest.mark.e2e

WORDS = ("rocket launch orbit market shares profit football goal match pasta recipe oven "
         "election vote senate storm flood rescue court judge appeal").split()


def _text(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _log_records(srv: ServerProcess, since: int = 0) -> list[dict]:
    """JSON log lines of the server, from character offset ``since`` (the log spans restarts)."""
    out = []
    for line in srv.log_text()[since:].splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


# ------------------------------------------------------------------------------------ redis
def test_redis_stopped_and_restarted_under_load(fresh_redis_server, built_minilm):
    redis = fresh_redis_server
    with ServerProcess(redis_url=redis.url, env={"REDIS_BREAKER_COOLDOWN_S": "1"}) as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert c.put("/v1/collections/rf", json={}).status_code == 201
            rng = random.Random(0)
            docs = [{"id": f"d{i}", "text": _text(rng)} for i in range(30)]
            assert c.post("/v1/collections/rf/documents", json={"documents": docs}).status_code == 200
        pool = [_text(random.Random(i), 6) for i in range(40)]  # repeats: cache hits and misses

        def embed(client: httpx.Client, w: int, i: int):
            return "embed", client.post("/v1/embeddings", json={"input": random.sample(pool, 3)})

        def search(client: httpx.Client, w: int, i: int):
            return "search", client.post("/v1/collections/rf/search",
                                         json={"query": random.choice(pool), "top_k": 3})

        load = Load(srv.url, [embed, search, embed, search]).start()
        time.sleep(2.0)
        t_down = time.time()
        redis.stop()
        time.sleep(4.0)
        redis.start()                       # same port, empty (no persistence)
        t_up = time.time()
        time.sleep(4.0)
        outcomes = load.stop()
        bad = [o for o in outcomes if o.status != 200]
        assert not bad, bad[:5]
        during = [o for o in outcomes if t_down <= o.start <= t_up]
        assert len(during) >= 4, "no requests were served while Redis was down"
        # the cache recovers: readiness reports it and new entries reach the new Redis
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            while True:
                c.post("/v1/embeddings", json={"input": [f"fresh text {time.time()}"]})
                if c.get("/readyz").json()["cache"] == "ok" and redis.client().dbsize() > 0:
                    break
                assert time.monotonic() < deadline, c.get("/readyz").text
                time.sleep(0.5)


# ------------------------------------------------------------------------------------ drain
@pytest.fixture(scope="module")
def drained(built_minilm) -> Iterator[ServerProcess]:
    # no periodic index snapshot: the one on disk after the stop must come from the shutdown
    env = {"INDEX_SNAPSHOT_EVERY_WRITES": "100000000", "INDEX_SNAPSHOT_EVERY_S": "100000"}
    with ServerProcess(env=env) as srv:
        yield srv


def test_sigterm_under_load_drains_and_commits(drained):
    srv = drained
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.put("/v1/collections/drain", json={}).status_code == 201
    rng = random.Random(1)

    def upsert(size: int):
        def make(client: httpx.Client, w: int, i: int):
            ids = [f"w{w}-{i}-{j}" for j in range(size)]
            r = client.post("/v1/collections/drain/documents", json={"documents": [
                {"id": d, "text": _text(rng, 12)} for d in ids]})
            r.extra = ids
            return f"upsert{size}", r
        return make

    def search(client: httpx.Client, w: int, i: int):
        return "search", client.post("/v1/collections/drain/search", json={"query": _text(rng), "top_k": 5})

    # small writes and searches all along; one big upsert per worker is in flight at SIGTERM
    load = Load(srv.url, [upsert(8), upsert(8), search, search], keepalive=False,
                stop_on_error=True).start()
    time.sleep(3.0)
    big = Load(srv.url, [upsert(256), upsert(256)], keepalive=False, stop_on_error=True).start()
    time.sleep(1.0)                          # both big bodies sent and being encoded
    t_sig = time.time()
    srv.signal(signal.SIGTERM)
    code = srv.wait(90)
    outcomes = load.join() + big.join()
    srv.stop()                               # reap
    log = srv.log_text()
    assert "service stopped" in log, log[-3000:]
    assert code in (0, -signal.SIGTERM), code  # uvicorn re-raises the signal after its drain

    assert all(o.status in (None, 200) for o in outcomes), [o for o in outcomes if o.status not in (None, 200)]
    early_failures = [o for o in outcomes if o.error and o.start < t_sig - 1.0]
    assert not early_failures, early_failures  # everything sent before the signal was answered
    finished_after = [o for o in outcomes if o.status == 200 and o.end > t_sig]
    assert any(o.name == "upsert256" for o in finished_after), \
        "no in-flight request completed after SIGTERM"
    acked = {d for o in outcomes if o.status == 200 and o.info for d in o.info}
    assert len(acked) > 256

    mark = len(srv.log_text())
    srv.start()
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        stored, cursor = set(), None
        while True:
            page = c.get("/v1/collections/drain/documents",
                         params={"limit": 1000, **({"cursor": cursor} if cursor else {})}).json()
            stored |= {d["id"] for d in page["documents"]}
            cursor = page["next_cursor"]
            if not cursor:
                break
    assert acked <= stored, f"{len(acked - stored)} acknowledged documents lost"
    # the index snapshot was flushed by the shutdown: loaded as is, nothing left to replay
    msgs = [r.get("msg", "") for r in _log_records(srv, mark)]
    assert any("collection drain: loaded index snapshot" in m and "replayed 0 changes" in m
               for m in msgs), msgs[-20:]


def _hits(url: str, queries: list[str]) -> tuple[int, list[list[tuple[str, float]]]]:
    with httpx.Client(base_url=url, timeout=60) as c:
        count = c.get("/v1/collections/drain").json()["count"]
        hits = [[(h["id"], round(h["score"], 4)) for h in
                 c.post("/v1/collections/drain/search", json={"query": q, "top_k": 10, "include": []}
                        ).json()["results"]] for q in queries]
    return count, hits


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_index_snapshot_is_rebuilt_on_startup(drained, damage):
    srv = drained
    queries = ["rocket orbit launch", "court judge appeal", "pasta oven recipe"]
    count, before = _hits(srv.url, queries)
    assert count > 0
    srv.stop()
    path = srv.data_dir / "collections" / "drain" / "index.snapshot"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) // 3]
    else:
        data = bytearray(b"\0" * len(data))
    path.write_bytes(bytes(data))
    mark = len(srv.log_text())
    srv.start()
    records = _log_records(srv, mark)
    warned = [r for r in records if "collection drain: index snapshot unusable" in r.get("msg", "")]
    assert warned, [r.get("msg") for r in records][-20:]
    assert "rebuilding the index from the document store" in warned[-1]["msg"]
    if damage != "garbage":
        assert "checksum" in warned[-1]["msg"]
    assert _hits(srv.url, queries) == (count, before)
    read_snapshot(path)  # a fresh, valid snapshot was written after the rebuild

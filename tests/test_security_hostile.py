"""Hostile input: traversal strings, glob characters, quotes/SQL, NUL bytes, invalid UTF-8, huge
numbers, NaN and infinity.  Every answer is a 4xx (never a 5xx), nothing is written outside
DATA_DIR, Redis only ever sees hashed keys, and no non-finite number is ever stored.

The app runs with a real redis-server (session fixture) so the cache tier is exercised too.
"""
from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings

TRAVERSAL = ["..", "../etc", "../../../../etc/passwd", "..%2f..%2fetc", "%2e%2e%2f", "/etc/passwd",
             "..\\..\\windows", "C:\\Windows", "a/../../b", "~root", ".hidden", "a\x00b"]
GLOB = ["*", "a*", "?", "a?b", "[a-z]", "a[", "\\*", "{a,b}"]
QUOTES = ["a'b", 'a"b', "x' OR '1'='1", "1; DROP TABLE documents; --", "a`b", "%", "a%_"]
HOSTILE_NAMES = TRAVERSAL + GLOB + QUOTES + [" ", "a" * 65, "é", "a b", "a\nb", "\u202e"]
HOSTILE_IDS = TRAVERSAL[:-1] + GLOB + QUOTES + ["\u202e", "a\nb", "  ", "x" * 256]

JSON = {"content-type": "application/json"}
BIG_INT = "1" + "0" * 400          # 10**400 as a JSON integer
HUGE_EXP = "1e309"                  # overflows a float


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, built_minilm: object,
            redis_server) -> Iterator[tuple[TestClient, Path]]:
    from app.main import create_app

    root = tmp_path_factory.mktemp("hostile")
    prefix = "hostile-test:"
    app = create_app(make_settings(root / "data", redis_url=redis_server.url, cache_prefix=prefix))
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as c:
        assert c.put("/v1/collections/h", json={}).status_code == 201
        assert c.put("/v1/collections/v", json={"dim": 3, "metric": "cosine"}).status_code == 201
        r = c.post("/v1/collections/v/documents", json={"documents": [
            {"id": "v1", "vector": [1.0, 0.0, 0.0], "metadata": {"n": 1}}]})
        assert r.status_code == 200, r.text
        yield c, root


def _enc(value: str) -> str:
    """A path segment the app receives exactly as ``value``.  Dots are encoded (a client must not
    resolve '..' itself: the server has to see it) and everything is encoded twice because
    Starlette's TestClient decodes the already-decoded path once more (a real server decodes
    once)."""
    return quote(quote(value, safe="").replace(".", "%2E"), safe="")


def _not_5xx(r) -> None:
    assert r.status_code < 500, f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}"


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_collection_names(hostile, name):
    c, _ = hostile
    enc = _enc(name)
    for method, path, body in [("PUT", f"/v1/collections/{enc}", {}),
                               ("GET", f"/v1/collections/{enc}", None),
                               ("DELETE", f"/v1/collections/{enc}", None),
                               ("POST", f"/v1/collections/{enc}/documents", {"documents": [{"text": "x"}]}),
                               ("POST", f"/v1/collections/{enc}/search", {"query": "x"}),
                               ("POST", f"/v1/collections/{enc}/snapshot", None),
                               ("GET", f"/v1/collections/{enc}/snapshots", None),
                               ("POST", f"/v1/collections/{enc}/restore",
                                {"snapshot": "20240101T000000.000000Z.tar"}),
                               ("PUT", f"/v1/classifiers/{enc}", {"examples": [{"text": "a", "label": "x"}]}),
                               ("GET", f"/v1/classifiers/{enc}", None),
                               ("DELETE", f"/v1/classifiers/{enc}", None),
                               ("POST", f"/v1/classifiers/{enc}/predict", {"texts": ["a"]})]:
        r = c.request(method, path, json=body)
        _not_5xx(r)
        assert r.status_code in (400, 404, 405, 422), (method, path, r.status_code, r.text[:200])


@pytest.mark.parametrize("snapshot", TRAVERSAL + GLOB + ["../../collections/h/documents.sqlite3",
                                                         "20240101T000000.000000Z.tar/../../x",
                                                         "/tmp/x.tar", "x.tar"])
def test_snapshot_names_are_never_paths(hostile, snapshot):
    c, _ = hostile
    r = c.post("/v1/collections/h/restore", json={"snapshot": snapshot})
    assert r.status_code == 422, r.text
    r = c.delete(f"/v1/collections/h/snapshots/{_enc(snapshot)}")
    assert r.status_code in (404, 405, 422), r.text


@pytest.mark.parametrize("doc_id", HOSTILE_IDS)
def test_hostile_document_ids_are_plain_data(hostile, doc_id):
    c, _ = hostile
    r = c.post("/v1/collections/h/documents", json={"documents": [{"id": doc_id, "text": "hostile id"}]})
    _not_5xx(r)
    assert r.status_code == 200, r.text  # any id is data (stored as an SQL parameter)
    if "\n" not in doc_id:  # a path parameter cannot hold a line break (read it by search)
        got = c.get(f"/v1/collections/h/documents/{_enc(doc_id)}")
        assert got.status_code == 200 and got.json()["id"] == doc_id, got.text
    r = c.post("/v1/collections/h/recommend", json={"positive": [doc_id], "top_k": 1})
    _not_5xx(r)
    r = c.post("/v1/collections/h/documents/delete", json={"ids": [doc_id, doc_id[:255] + "%"]})
    assert r.status_code == 200 and r.json()["deleted_ids"] == [doc_id], r.text


@pytest.mark.parametrize("bad_id", ["", "a\x00b", "x" * 257])
def test_invalid_document_ids(hostile, bad_id):
    c, _ = hostile
    r = c.post("/v1/collections/h/documents", json={"documents": [{"id": bad_id, "text": "x"}]})
    assert r.status_code in (400, 422), r.text
    r = c.get(f"/v1/collections/h/documents/{_enc(bad_id)}")
    assert r.status_code in (400, 404, 422), r.text


@pytest.mark.parametrize("flt", [
    {"a' OR 1=1 --": "x"}, {"lang": "x'); DROP TABLE documents; --"},
    {"lang": {"$in": ["'", '"', "%", "_", "\\", "*"]}}, {"$or": [{"a": "' OR ''='"}]},
    {'a")': 1}, {"a\\b": 1}, {"a\x00": 1}, {"a..b": 1}, {"$where": "1"}, {"a": {"$regex": ".*"}},
    {"n": {"$gt": "1; DROP TABLE x"}}, {"n": {"$in": []}}, {"n": {"$in": list(range(2000))}},
    {"n": 2 ** 63}, {"n": {"$lt": -(2 ** 63) - 1}}, {"n": 1e308}, {"n": [1, 2]}, {"n": {"a": 1}},
    "a string", ["a", "list"], 42,
])
def test_filters_with_quotes_sql_and_odd_values(hostile, flt):
    c, _ = hostile
    for path in ("/v1/collections/v/search", "/v1/collections/v/documents/delete"):
        body = {"vector": [1, 0, 0], "filter": flt} if path.endswith("search") else {"filter": flt}
        r = c.post(path, json=body)
        _not_5xx(r)
        assert r.status_code in (200, 400, 422), r.text
        if r.status_code == 200 and path.endswith("search"):
            assert r.json()["results"] == [] or r.json()["results"][0]["id"] == "v1"
    assert c.get("/v1/collections/v").json()["count"] == 1  # nothing deleted, table intact


@pytest.mark.parametrize("path,raw", [
    ("/v1/collections/v/documents", '{"documents":[{"id":"n","vector":[NaN,1,2]}]}'),
    ("/v1/collections/v/documents", '{"documents":[{"id":"n","vector":[Infinity,1,2]}]}'),
    ("/v1/collections/v/documents", '{"documents":[{"id":"n","vector":[-Infinity,1,2]}]}'),
    ("/v1/collections/v/documents", '{"documents":[{"id":"n","vector":[%s,1,2]}]}' % HUGE_EXP),
    ("/v1/collections/v/documents", '{"documents":[{"id":"n","vector":[%s,1,2]}]}' % BIG_INT),
    ("/v1/collections/v/documents", '{"documents":[{"id":"n","vector":[1e39,1,2]}]}'),  # > float32
    ("/v1/collections/v/documents", '{"documents":[{"id":"n","vector":[0,0,0]}]}'),
    ("/v1/collections/v/documents", '{"documents":[{"id":"n","vector":[1,2,3],"metadata":{"x":NaN}}]}'),
    ("/v1/collections/v/documents", '{"documents":[{"id":"n","vector":[1,2,3],"metadata":{"x":%s}}]}' % BIG_INT),
    ("/v1/collections/v/documents", '{"documents":[{"id":"n","vector":[1,2,3],"metadata":{"x":%s}}]}' % HUGE_EXP),
    ("/v1/collections/v/search", '{"vector":[NaN,0,0]}'),
    ("/v1/collections/v/search", '{"vector":[%s,0,0]}' % HUGE_EXP),
    ("/v1/collections/v/search", '{"vector":[1,0,0],"min_score":NaN}'),
    ("/v1/collections/v/search", '{"vector":[1,0,0],"min_score":-Infinity}'),
    ("/v1/collections/v/search", '{"vector":[1,0,0],"top_k":%s}' % BIG_INT),
    ("/v1/collections/v/search", '{"vector":[1,0,0],"filter":{"n":%s}}' % BIG_INT),
    ("/v1/collections/v/search", '{"vector":[1,0,0],"filter":{"n":{"$gte":%s}}}' % BIG_INT),
    ("/v1/collections/v/search", '{"vector":[1,0,0],"filter":{"n":NaN}}'),
    ("/v1/collections/v/recommend", '{"positive":["v1"],"negative_weight":NaN}'),
    ("/v1/similarity/pairs", '{"texts":["a","b"],"threshold":NaN}'),
    ("/v1/similarity/pairs", '{"texts":["a","b"],"top_k":%s}' % BIG_INT),
    ("/v1/embeddings", '{"input":"x","dimensions":%s}' % BIG_INT),
    ("/v1/embeddings", '{"input":[%s]}' % BIG_INT),
    ("/v1/embeddings", '{"input":"x","dimensions":1%s}' % ("0" * 5000)),  # beyond int parsing
    ("/v1/classify", '{"texts":["a"],"labels":["x","y"],"temperature":NaN}'),
    ("/v1/cluster", '{"texts":["a","b"],"threshold":Infinity}'),
    ("/v1/collections/v/documents", '{"documents":[{"id":"n","vector":[1,2,3]}], "x": NaN'),  # broken
])
def test_non_finite_and_huge_numbers_are_rejected(hostile, path, raw):
    c, root = hostile
    r = c.post(path, content=raw.encode(), headers=JSON)
    _not_5xx(r)
    assert 400 <= r.status_code < 500, (path, raw[:80], r.status_code, r.text[:300])
    assert c.get("/v1/collections/v/documents/n").status_code == 404  # never stored


@pytest.mark.parametrize("body", [
    b'\xff\xfe{"input": "x"}', b'{"input": "caf\xc3"}', b'{"input": "\xed\xa0\x80"}',
    b'{"input": "\\ud800"}', b'{"input": ["ok", "\\udfff tail"]}', b'{"input": "\x00"}',
    b'{"input": "a\\u0000b"}', b"", b"{", b"null", b"[]", b'"just a string"', b"\x00" * 64,
    b'{"input": ' + b"[" * 100000 + b"]" * 100000 + b"}",
])
def test_invalid_utf8_nul_and_malformed_bodies(hostile, body):
    c, _ = hostile
    for path in ("/v1/embeddings", "/v1/collections/h/documents", "/v1/collections/h/search",
                 "/v1/similarity", "/v1/classify"):
        r = c.post(path, content=body, headers=JSON)
        _not_5xx(r)
        assert 400 <= r.status_code < 500, (path, body[:40], r.text[:200])


def test_surrogate_pairs_still_work(hostile):
    c, _ = hostile
    r = c.post("/v1/embeddings", content=b'{"input": "emoji \\ud83d\\ude00 ok"}', headers=JSON)
    assert r.status_code == 200, r.text
    r = c.post("/v1/embeddings", content=b'{"input": "NaN and Infinity are words, 1e309 too"}',
               headers=JSON)
    assert r.status_code == 200, r.text


def test_nothing_outside_data_dir_and_no_nonfinite_stored(hostile):
    c, root = hostile
    # the hostile names above produced nothing on disk but the two collections
    assert sorted(p.name for p in root.iterdir()) == ["data"]
    cols = sorted(p.name for p in (root / "data" / "collections").iterdir())
    assert cols == ["h", "v"], cols
    for p in (root / "data").rglob("*"):
        assert p.resolve().is_relative_to((root / "data").resolve())
    db = sqlite3.connect(root / "data" / "collections" / "v" / "documents.sqlite3")
    try:
        import numpy as np
        for meta, blob in db.execute("SELECT metadata, vector FROM documents"):
            assert np.isfinite(np.frombuffer(blob, dtype="<f4")).all()
            json.loads(meta, parse_constant=lambda t: pytest.fail(f"non-finite {t} stored"))
    finally:
        db.close()


def test_redis_only_sees_hashed_keys(hostile, redis_server):
    c, _ = hostile
    for text in GLOB + QUOTES + ["* KEYS *", "\r\nFLUSHALL\r\n", "semsearch:*"]:
        assert c.post("/v1/embeddings", json={"input": text}).status_code == 200
        r = c.post("/v1/collections/h/search", json={"query": text, "filter": {text: text}})
        assert r.status_code in (200, 400), r.text
    keys = [k.decode() for k in redis_server.client().scan_iter(match="hostile-test:*", count=1000)]
    assert keys, "the cache wrote nothing to Redis"
    pattern = re.compile(r"hostile-test:(emb:[0-9a-f]{64}|res:[a-z_]+:[0-9a-f]{64})")
    bad = [k for k in keys if not pattern.fullmatch(k)]
    assert not bad, bad[:5]

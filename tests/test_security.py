"""API keys and scopes, open endpoints, keys never logged, CORS (real app, real minilm)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app.auth import AuthConfigError, KeyRing, load_keyring, parse_key_spec, require_scope
from app.middleware import JsonLogFormatter
from tests.conftest import make_settings

READ_KEY = "read-key-7f3a9c0d2b1e4f56"
WRITE_KEY = "write-key-1c2d3e4f5a6b7c8d"
FILE_KEY = "file-read-key-9e8d7c6b5a4f"
ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, built_minilm: object) -> Iterator[TestClient]:
    from app.main import create_app

    tmp = tmp_path_factory.mktemp("auth")
    keys_file = tmp / "keys.txt"
    keys_file.write_text(f"# operators' keys\n\n{FILE_KEY}:read   # the dashboard\n")
    app = create_app(make_settings(tmp / "data", api_keys=f"{READ_KEY}:read, {WRITE_KEY}:write",
                                   api_keys_file=keys_file, cors_origins=ORIGIN))
    with TestClient(app) as c:
        r = c.put("/v1/collections/sec", json={}, headers=_bearer(WRITE_KEY))
        assert r.status_code == 201, r.text
        r = c.post("/v1/collections/sec/documents", headers=_bearer(WRITE_KEY), json={"documents": [
            {"id": "a", "text": "the cat sat on the mat"}, {"id": "b", "text": "stock markets fell"}]})
        assert r.status_code == 200, r.text
        yield c


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


READS = [("POST", "/v1/embeddings", {"input": "hello"}),
         ("POST", "/v1/similarity", {"source": "a cat", "targets": ["a dog"]}),
         ("GET", "/v1/models", None),
         ("GET", "/v1/collections", None),
         ("GET", "/v1/collections/sec", None),
         ("GET", "/v1/collections/sec/documents", None),
         ("GET", "/v1/collections/sec/documents/a", None),
         ("POST", "/v1/collections/sec/search", {"query": "cat", "top_k": 1}),
         ("POST", "/v1/collections/sec/recommend", {"positive": ["a"], "top_k": 1}),
         ("GET", "/v1/collections/sec/snapshots", None)]
# Each would change state; with a read key they must stop at 403 before doing anything.
WRITES = [("PUT", "/v1/collections/other", {}),
          ("DELETE", "/v1/collections/sec", None),
          ("POST", "/v1/collections/sec/documents", {"documents": [{"id": "x", "text": "x"}]}),
          ("DELETE", "/v1/collections/sec/documents/a", None),
          ("POST", "/v1/collections/sec/documents/delete", {"ids": ["a"]}),
          ("POST", "/v1/collections/sec/snapshot", None),
          ("POST", "/v1/collections/sec/restore", {"snapshot": "20240101T000000.000000Z.tar"})]


def _call(c: TestClient, method: str, path: str, body: object, headers: dict[str, str] | None = None):
    return c.request(method, path, json=body, headers=headers or {})


@pytest.mark.parametrize("method,path,body", READS + WRITES)
def test_no_key_is_401_with_challenge(keyed, method, path, body):
    r = _call(keyed, method, path, body)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"]["type"] == "unauthorized"


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer not-a-key"}, {"X-API-Key": "not-a-key"},
    {"Authorization": f"Bearer {READ_KEY}x"}, {"Authorization": f"Bearer {READ_KEY[:-1]}"},
    {"Authorization": f"Basic {READ_KEY}"}, {"Authorization": READ_KEY}, {"X-API-Key": ""}])
def test_unknown_or_malformed_key_is_401(keyed, headers):
    r = keyed.post("/v1/embeddings", json={"input": "x"}, headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("method,path,body", READS)
@pytest.mark.parametrize("headers", [_bearer(READ_KEY), {"X-API-Key": READ_KEY}, _bearer(FILE_KEY),
                                     _bearer(WRITE_KEY)])
def test_read_endpoints_accept_read_and_write_keys(keyed, method, path, body, headers):
    r = _call(keyed, method, path, body, headers)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("method,path,body", WRITES)
@pytest.mark.parametrize("key", [READ_KEY, FILE_KEY])
def test_write_endpoints_refuse_read_keys_with_403(keyed, method, path, body, key):
    r = _call(keyed, method, path, body, _bearer(key))
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["type"] == "forbidden" and err["details"] == {"scope": "read", "required": "write"}
    # nothing happened
    assert keyed.get("/v1/collections/sec", headers=_bearer(READ_KEY)).json()["count"] == 2
    assert keyed.get("/v1/collections/other", headers=_bearer(READ_KEY)).status_code == 404


def test_write_key_can_write(keyed):
    h = {"X-API-Key": WRITE_KEY}
    assert keyed.put("/v1/collections/w", json={}, headers=h).status_code == 201
    r = keyed.post("/v1/collections/w/documents", json={"documents": [{"id": "1", "text": "hi"}]}, headers=h)
    assert r.status_code == 200
    assert keyed.post("/v1/collections/w/snapshot", headers=h).status_code == 201
    assert keyed.delete("/v1/collections/w", headers=h).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json"])
def test_health_readiness_metrics_and_schema_stay_open(keyed, path):
    assert keyed.get(path).status_code == 200


def test_auth_off_by_default(client):
    assert client.app.state.keyring.enabled is False
    assert client.post("/v1/embeddings", json={"input": "hello"}).status_code == 200


def test_every_route_declares_a_scope(keyed):
    """A route added later without a scope dependency fails here (open: health, metrics, docs)."""
    open_paths = {"/healthz", "/readyz", "/metrics"}
    read, write = require_scope("read"), require_scope("write")
    missing, wrong = [], []
    for route in keyed.app.routes:
        if not isinstance(route, APIRoute) or route.path in open_paths:
            continue
        calls = {d.call for d in route.dependant.dependencies}
        if read not in calls and write not in calls:
            missing.append(f"{sorted(route.methods)} {route.path}")
        if route.methods == {"GET"} and write in calls:
            wrong.append(route.path)
        mutating = route.methods & {"PUT", "DELETE"} or route.path.endswith(
            ("/documents", "/documents/delete", "/snapshot", "/restore"))
        if mutating and write not in calls:
            wrong.append(f"{sorted(route.methods)} {route.path} needs the write scope")
    assert not missing, f"routes without a scope dependency: {missing}"
    assert not wrong, wrong


def test_openapi_declares_security_schemes(keyed):
    spec = keyed.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"}
    assert spec["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-Key"
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path.startswith("/v1/"):
                assert {"bearer": []} in op.get("security", []), f"{method} {path}"
            else:
                assert "security" not in op, f"{method} {path}"


def test_keys_never_logged_or_echoed(keyed, caplog):
    formatter = JsonLogFormatter()
    with caplog.at_level(logging.DEBUG):
        responses = [keyed.post("/v1/embeddings", json={"input": "x"}, headers=_bearer(WRITE_KEY)),
                     keyed.post("/v1/embeddings", json={"input": "x"}, headers=_bearer(WRITE_KEY + "0")),
                     keyed.put("/v1/collections/z", json={}, headers={"X-API-Key": READ_KEY}),
                     keyed.get("/v1/collections/nope", headers=_bearer(READ_KEY))]
    lines = [formatter.format(rec) for rec in caplog.records]
    assert any('"status": 401' in line for line in lines), "the access log line was not captured"
    text = "\n".join(lines) + "\n".join(r.text for r in responses) + \
        "\n".join(json.dumps(dict(r.headers)) for r in responses)
    for key in (READ_KEY, WRITE_KEY, FILE_KEY):
        assert key not in text
        assert key[:12] not in text


def test_compares_against_every_key(monkeypatch):
    """No early exit: the presented key is compared with every configured key."""
    import app.auth as auth

    ring = load_keyring("k-first-000000000000:read,k-second-00000000000:write,k-third-000000000000:read")
    calls: list[int] = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    for presented, scope in [("k-first-000000000000", "read"), ("k-third-000000000000", "read"),
                             ("k-second-00000000000", "write"), ("nope", None)]:
        calls.clear()
        assert ring.scope_of(presented) == scope
        assert len(calls) == 3
    assert "k-first" not in repr(ring)


def test_key_spec_parsing():
    assert parse_key_spec(" a-key-123:read , b-key-456:WRITE ,") == [("a-key-123", "read"), ("b-key-456", "write")]
    assert parse_key_spec("x:y:write") == [("x:y", "write")]  # the last ':' separates the scope
    ring = load_keyring("same-key-0000:read,same-key-0000:write")
    assert ring.scope_of("same-key-0000") == "write"  # listed twice: the higher scope
    assert not KeyRing().enabled and load_keyring("").enabled is False
    for bad in ["secret-value-xyz", "secret-value-xyz:admin", ":read", "secret value:read"]:
        with pytest.raises(AuthConfigError) as info:
            parse_key_spec(bad)
        assert "secret" not in str(info.value)  # the key is never shown, only its position


def test_missing_keys_file_stops_start_up(tmp_path):
    from app.main import create_app

    with pytest.raises(AuthConfigError):
        create_app(make_settings(tmp_path, api_keys_file=tmp_path / "absent.txt"))


def test_cors_off_by_default(client):
    r = client.options("/v1/embeddings", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    r = client.post("/v1/embeddings", json={"input": "x"}, headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in r.headers


def test_cors_allows_only_configured_origins(keyed):
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    r = keyed.options("/v1/embeddings", headers={"Origin": ORIGIN, **pre})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = keyed.options("/v1/embeddings", headers={"Origin": "https://evil.example", **pre})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    # errors carry the header too, so a browser client can read the 401 envelope
    r = keyed.post("/v1/embeddings", json={"input": "x"}, headers={"Origin": ORIGIN})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN

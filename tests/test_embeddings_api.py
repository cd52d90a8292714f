"""POST /v1/embeddings against the real app and the real minilm model."""
from __future__ import annotations

import base64

import numpy as np
import pytest


def test_single_string_openai_shape(client):
    r = client.post("/v1/embeddings", json={"input": "The quick brown fox", "model": "minilm"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "minilm"
    assert len(body["data"]) == 1
    item = body["data"][0]
    assert item["object"] == "embedding" and item["index"] == 0
    vec = np.array(item["embedding"])
    assert vec.shape == (384,)
    assert abs(np.linalg.norm(vec) - 1) < 1e-3
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 2


def test_default_model_and_list_input_order(client):
    texts = ["dogs are loyal", "the stock market fell", "puppies are faithful companions"]
    r = client.post("/v1/embeddings", json={"input": texts})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "minilm"
    vecs = np.array([d["embedding"] for d in body["data"]])
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    # semantic sanity: the two dog sentences are closer to each other than to finance
    assert vecs[0] @ vecs[2] > vecs[0] @ vecs[1] + 0.2
    # same text alone gives the same vector as in the batch (padding does not leak)
    alone = np.array(client.post("/v1/embeddings", json={"input": texts[2]}).json()["data"][0]["embedding"])
    assert float(alone @ vecs[2]) > 0.9999


def test_base64_matches_float(client):
    f = client.post("/v1/embeddings", json={"input": ["hello there"], "encoding_format": "float"}).json()
    b = client.post("/v1/embeddings", json={"input": ["hello there"], "encoding_format": "base64"}).json()
    dec = np.frombuffer(base64.b64decode(b["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(dec, f["data"][0]["embedding"], atol=1e-6)


def test_openai_client_request_shape(client):
    """The exact body the official openai-python client sends (it asks for base64 by default)."""
    body = {"input": ["first doc", "second doc"], "model": "minilm", "encoding_format": "base64",
            "user": "someone"}
    r = client.post("/v1/embeddings", json=body,
                    headers={"Authorization": "Bearer sk-anything", "OpenAI-Beta": "x",
                             "X-Stainless-Lang": "python"})
    assert r.status_code == 200
    data = r.json()["data"]
    assert len(data) == 2 and all(isinstance(d["embedding"], str) for d in data)
    assert len(base64.b64decode(data[0]["embedding"])) == 384 * 4


def test_truncation_reported(client):
    long = "word " * 2000
    r = client.post("/v1/embeddings", json={"input": ["short", long]})
    assert r.status_code == 200
    d = r.json()["data"]
    assert d[0]["truncated"] is False and d[1]["truncated"] is True
    assert r.json()["usage"]["prompt_tokens"] <= 256 + 10


def test_timing_headers(client):
    r = client.post("/v1/embeddings", json={"input": "timing headers please"})
    for h in ("x-queue-time-ms", "x-inference-time-ms", "x-batch-size", "x-request-id"):
        assert h in r.headers
    rid = client.post("/v1/embeddings", json={"input": "x y"}, headers={"X-Request-ID": "abc-123"})
    assert rid.headers["x-request-id"] == "abc-123"


@pytest.mark.parametrize("body,status,etype", [
    ({"input": []}, 422, "empty_input"),
    ({"input": ""}, 422, "empty_text"),
    ({"input": ["ok", "   "]}, 422, "empty_text"),
    ({"input": "x", "model": "no-such-model"}, 404, "model_not_found"),
    ({"input": [1, 2, 3]}, 422, "unsupported_input"),
    ({"input": "x", "encoding_format": "int8"}, 422, "validation_error"),
    ({"input": "x", "dimensions": 12}, 422, "unsupported_dimensions"),
    ({"inputs": "typo"}, 422, "validation_error"),
    ({"input": "nul\x00byte"}, 422, "invalid_text"),
])
def test_bad_input_envelope(client, body, status, etype):
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == etype and err["message"]


def test_unknown_model_lists_known(client):
    err = client.post("/v1/embeddings", json={"input": "x", "model": "gpt-9"}).json()["error"]
    assert "minilm" in err["details"]["available"]


def test_malformed_json_is_422(client):
    r = client.post("/v1/embeddings", content=b'{"input": ', headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["type"] == "validation_error"


def test_too_many_texts_413(tmp_path, built_minilm):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.conftest import make_settings

    with TestClient(create_app(make_settings(tmp_path, max_texts_per_request=3))) as c:
        r = c.post("/v1/embeddings", json={"input": ["a", "b", "c", "d"]})
        assert r.status_code == 413 and r.json()["error"]["type"] == "too_many_texts"


def test_overlong_chars_truncate_or_reject(tmp_path, built_minilm):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.conftest import make_settings

    with TestClient(create_app(make_settings(tmp_path, max_text_chars=50))) as c:
        r = c.post("/v1/embeddings", json={"input": "a" * 60})
        assert r.status_code == 200 and r.json()["data"][0]["truncated"] is True
    with TestClient(create_app(make_settings(tmp_path, max_text_chars=50, overlong_text="reject"))) as c:
        r = c.post("/v1/embeddings", json={"input": ["fine", "a" * 60]})
        assert r.status_code == 413 and r.json()["error"]["details"]["index"] == 1


def test_body_size_limit(tmp_path, built_minilm):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.conftest import make_settings

    with TestClient(create_app(make_settings(tmp_path, max_body_bytes=1000))) as c:
        r = c.post("/v1/embeddings", json={"input": "x" * 5000})
        assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"

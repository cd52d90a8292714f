"""POST /v1/evaluate: recall@k and MRR of a named encoder on the caller's own pairs."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import make_settings


@pytest.fixture(scope="module")
def eval_client(tmp_path_factory):
    from models.build import build

    build("minilm")
    build("medical")
    with TestClient(create_app(make_settings(tmp_path_factory.mktemp("ev"), models="minilm,medical"))) as c:
        yield c


def test_evaluate_metrics(eval_client):
    pairs = [{"query": "heart attack", "document": "Myocardial infarction"},
             {"query": "high blood sugar", "document": "Hyperglycemia"},
             {"query": "hair loss", "document": "Alopecia"},
             {"query": "short stature", "document": "Short stature"}]
    r = eval_client.post("/v1/evaluate", json={"model": "minilm", "pairs": pairs})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["queries"] == 4 and body["documents"] == 4
    assert 0 <= body["recall_at_1"] <= body["recall_at_10"] == 1.0   # 4 documents: all in the top 10
    assert 0 < body["mrr"] <= 1


def test_evaluate_bad_input(eval_client):
    assert eval_client.post("/v1/evaluate", json={"pairs": []}).status_code == 422
    assert eval_client.post("/v1/evaluate", json={"pairs": [{"query": "", "document": "x"}]}).status_code == 422
    assert eval_client.post("/v1/evaluate", json={"model": "nope", "pairs": [{"query": "a", "document": "b"}]}).status_code == 404
    assert eval_client.post("/v1/evaluate", json={"model": "auto", "pairs": [{"query": "a", "document": "b"}]}).status_code == 400


def test_evaluate_agrees_with_library_metrics(eval_client):
    import numpy as np

    from models.evaluate import retrieval_metrics

    pairs = [{"query": q, "document": d} for q, d in [
        ("heart attack", "Myocardial infarction"), ("high blood sugar", "Hyperglycemia"),
        ("hair loss", "Alopecia"), ("nosebleed", "Epistaxis"), ("short stature", "Short stature"),
        ("itchy skin", "Pruritus"), ("fainting", "Syncope"), ("double vision", "Diplopia")]]
    for model in ("minilm", "medical"):
        body = eval_client.post("/v1/evaluate", json={"model": model, "pairs": pairs}).json()
        emb = lambda t: np.array([d["embedding"] for d in eval_client.post(
            "/v1/embeddings", json={"model": model, "input": t}).json()["data"]])
        ref = retrieval_metrics(emb([p["query"] for p in pairs]), emb([p["document"] for p in pairs]),
                                list(range(len(pairs))))
        assert abs(body["mrr"] - ref["mrr"]) < 0.05, (model, body, ref)

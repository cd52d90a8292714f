"""model="auto": texts are routed to the domain encoders, and the response says which."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import make_settings

TEXTS = {
    "medical": "shortness of breath and chest pain radiating to the left arm",
    "legal": "This program is free software; you can redistribute it and/or modify it under the terms "
             "of the GNU General Public License as published by the Free Software Foundation",
    "finance": "The earned income tax credit phases out as adjusted gross income exceeds the threshold",
    "general": "The football team celebrated their victory in the stadium last night",
}


@pytest.fixture(scope="module")
def auto_client(tmp_path_factory):
    from models.build import build

    for name in ("minilm", "medical", "legal", "finance"):
        build(name)                       # no-op when the cache is current
    app = create_app(make_settings(tmp_path_factory.mktemp("auto"), models="minilm,medical,legal,finance"))
    with TestClient(app) as c:
        yield c


def test_domain_encoders_listed_with_figures(auto_client):
    models = {m["name"]: m for m in auto_client.get("/v1/models").json()["data"]}
    for name in ("medical", "legal", "finance"):
        assert models[name]["status"] == "ready" and models[name]["domain"] == name
        assert models[name]["metadata"].get("evaluation"), name


def test_embeddings_route_each_text(auto_client):
    r = auto_client.post("/v1/embeddings", json={"model": "auto", "input": list(TEXTS.values())})
    assert r.status_code == 200, r.text
    routes = [d["route"] for d in r.json()["data"]]
    expected = {"medical": "medical", "legal": "legal", "finance": "finance", "general": "minilm"}
    for (domain, _), route in zip(TEXTS.items(), routes):
        assert route["domain"] == domain and route["model"] == expected[domain], route
        assert 0 < route["confidence"] <= 1
    # the vector of a routed text is the chosen encoder's vector
    direct = auto_client.post("/v1/embeddings", json={"model": "medical", "input": TEXTS["medical"]}).json()
    import numpy as np
    a = np.array(r.json()["data"][0]["embedding"])
    b = np.array(direct["data"][0]["embedding"])
    assert float(a @ b) > 0.97


def test_similarity_auto_uses_one_encoder(auto_client):
    r = auto_client.post("/v1/similarity", json={"model": "auto", "source": "heart attack",
                                                 "targets": ["myocardial infarction", "tax return"]})
    assert r.status_code == 200 and r.json()["model"] == "medical"
    s = r.json()["scores"]
    assert s[0] > s[1]


def test_auto_not_for_collections(auto_client):
    r = auto_client.put("/v1/collections/autoc", json={"model": "auto"})
    assert r.status_code == 400


def test_domain_model_by_name_everywhere(auto_client):
    assert auto_client.put("/v1/collections/medc", json={"model": "medical"}).status_code == 201
    r = auto_client.post("/v1/collections/medc/documents", json={"documents": [
        {"id": "mi", "text": "Myocardial infarction"}, {"id": "dm", "text": "Diabetes mellitus"}]})
    assert r.status_code == 200
    hits = auto_client.post("/v1/collections/medc/search", json={"query": "heart attack", "top_k": 1}).json()["results"]
    assert hits[0]["id"] == "mi"


def test_missing_domain_model_is_reported_not_a_crash(tmp_path):
    # a registry name that is loadable but excluded, and an unknown one: the service starts anyway
    app = create_app(make_settings(tmp_path, models="minilm,nonexistent"))
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        r = c.post("/v1/embeddings", json={"model": "legal", "input": "x"})
        assert r.status_code in (404, 503) and "error" in r.json()


def test_unbuilt_model_reported_with_build_command(tmp_path, monkeypatch, built_minilm):
    import shutil

    cache = tmp_path / "cache"
    target = cache / "encoders" / "minilm" / built_minilm.directory.name
    shutil.copytree(built_minilm.directory, target)
    monkeypatch.setenv("MODEL_CACHE", str(cache))
    app = create_app(make_settings(tmp_path / "data", models=""))
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        models = {m["name"]: m for m in c.get("/v1/models").json()["data"]}
        assert models["minilm"]["status"] == "ready"
        assert models["mpnet"]["status"] == "unavailable"
        assert "python -m models build mpnet" in models["mpnet"]["reason"]
        assert "python -m models adapt --domain legal" in models["legal"]["reason"]
        r = c.post("/v1/embeddings", json={"model": "mpnet", "input": "x"})
        assert r.status_code == 503 and "not built" in r.json()["error"]["message"]
        r = c.post("/v1/embeddings", json={"model": "auto", "input": "x"})
        assert r.status_code == 503

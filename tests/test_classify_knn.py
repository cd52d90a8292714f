"""POST /v1/collections/{name}/classify: kNN vote over a labelled collection (real app)."""
from __future__ import annotations

import pytest

DOCS = [
    ("s1", "The rocket launched into orbit", {"topic": "space"}),
    ("s2", "NASA launched a new rocket into space", {"topic": "space"}),
    ("s3", "Astronauts flew to the space station", {"topic": "space", "lang": "en"}),
    ("b1", "Bake the bread in a hot oven", {"topic": "baking"}),
    ("b2", "Knead the dough and bake the bread", {"topic": "baking"}),
    ("b3", "A simple recipe for baking bread", {"topic": ["baking", "recipes"]}),
    ("r1", "The central bank raised interest rates", {"topic": "finance", "lang": "en"}),
    ("r2", "Interest rates rose again", {"topic": "finance"}),
    ("u1", "An unlabelled note about rockets", {}),
]


@pytest.fixture(scope="module")
def labelled(client):
    assert client.put("/v1/collections/knn", json={"model": "minilm"}).status_code in (200, 201)
    docs = [{"id": i, "text": t, "metadata": m} for i, t, m in DOCS]
    assert client.post("/v1/collections/knn/documents", json={"documents": docs}).status_code == 200
    assert client.put("/v1/collections/nolabels", json={"model": "minilm"}).status_code in (200, 201)
    client.post("/v1/collections/nolabels/documents",
                json={"documents": [{"id": "x", "text": "no labels here", "metadata": {"k": 1}}]})
    return "knn"


def test_knn_votes_in_input_order(client, labelled):
    r = client.post("/v1/collections/knn/classify", json={
        "texts": ["a rocket flew into orbit", "baking fresh bread", "the bank and interest rates"],
        "label_field": "topic", "k": 3})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["label"] for x in res] == ["space", "baking", "finance"]
    for x in res:
        assert abs(sum(x["scores"].values()) - 1) < 1e-4 and x["neighbors"] == 3
        assert list(x["scores"].values()) == sorted(x["scores"].values(), reverse=True)
    # a list-valued label votes for each of its values
    r = client.post("/v1/collections/knn/classify", json={"texts": ["bread recipe"],
                                                          "label_field": "topic", "k": 8})
    assert "recipes" in r.json()["results"][0]["scores"]


def test_knn_uses_only_labelled_and_filtered_documents(client, labelled):
    r = client.post("/v1/collections/knn/classify", json={
        "texts": ["rockets"], "label_field": "topic", "k": 1000, "filter": {"lang": "en"}})
    assert r.status_code == 200, r.text
    x = r.json()["results"][0]
    assert x["neighbors"] == 2 and set(x["scores"]) == {"space", "finance"} and x["label"] == "space"


@pytest.mark.parametrize("path,body,status,kind", [
    ("/v1/collections/missing/classify", {"texts": ["x"], "label_field": "topic"}, 404,
     "collection_not_found"),
    ("/v1/collections/nolabels/classify", {"texts": ["x"], "label_field": "topic"}, 422,
     "no_labelled_documents"),
    ("/v1/collections/knn/classify", {"texts": ["x"], "label_field": "colour"}, 422,
     "no_labelled_documents"),
    ("/v1/collections/knn/classify", {"texts": ["x"], "label_field": "topic", "filter": {"lang": "de"}},
     422, "no_labelled_documents"),
    ("/v1/collections/knn/classify", {"texts": ["x"], "label_field": "topic", "k": 0}, 422,
     "validation_error"),
    ("/v1/collections/knn/classify", {"texts": ["x"], "label_field": "topic", "k": 5000}, 422,
     "validation_error"),
    ("/v1/collections/knn/classify", {"texts": [], "label_field": "topic"}, 422, "empty_input"),
    ("/v1/collections/knn/classify", {"texts": [" "], "label_field": "topic"}, 422, "empty_text"),
    ("/v1/collections/knn/classify", {"texts": ["x"], "label_field": ""}, 422, "validation_error"),
    ("/v1/collections/knn/classify", {"texts": ["x"], "label_field": "topic",
                                      "filter": {"a": {"$nope": 1}}}, 400, "invalid_filter"),
    ("/v1/collections/bad.name/classify", {"texts": ["x"], "label_field": "topic"}, 400,
     "invalid_name"),
])
def test_knn_bad_input(client, labelled, path, body, status, kind):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind

"""Collections, documents, search and recommend through the real app and real minilm."""
from __future__ import annotations

import numpy as np
import pytest

DOCS = [
    {"id": "faiss", "text": "FAISS is a library for efficient similarity search of dense vectors",
     "metadata": {"kind": "software", "year": 2017, "published": "2017-03-01", "tags": ["search", "ann"]}},
    {"id": "redis", "text": "Redis is an in-memory key-value data store used as a cache",
     "metadata": {"kind": "software", "year": 2009, "published": "2009-05-10", "tags": ["cache"]}},
    {"id": "cat", "text": "The cat slept on the warm windowsill all afternoon",
     "metadata": {"kind": "story", "year": 2021, "published": "2021-07-04"}},
    {"id": "dog", "text": "A dog chased the ball across the park",
     "metadata": {"kind": "story", "year": 2022, "published": "2022-01-15"}},
    {"id": "tax", "text": "The earned income tax credit phases out as income rises",
     "metadata": {"kind": "law", "year": 2020, "published": "2020-12-31"}},
]


@pytest.fixture(scope="module")
def coll(client):
    r = client.put("/v1/collections/docs", json={"model": "minilm"})
    assert r.status_code == 201, r.text
    r = client.post("/v1/collections/docs/documents", json={"documents": DOCS})
    assert r.status_code == 200 and r.json()["count"] == 5
    return "docs"


def test_create_is_idempotent_and_conflicts(client, coll):
    assert client.put("/v1/collections/docs", json={"model": "minilm"}).status_code == 200
    r = client.put("/v1/collections/docs", json={"model": "minilm", "metric": "l2"})
    assert r.status_code == 409 and r.json()["error"]["type"] == "collection_conflict"
    names = [c["name"] for c in client.get("/v1/collections").json()["collections"]]
    assert "docs" in names


@pytest.mark.parametrize("name", ["a" * 65, "bad name", "semi;colon", "dot.dot", "ünï"])
def test_invalid_names(client, name):
    r = client.put(f"/v1/collections/{name}", json={})
    assert r.status_code in (400, 422), r.text
    assert "error" in r.json()


def test_bad_create_bodies(client):
    assert client.put("/v1/collections/x1", json={"model": "nope"}).status_code == 404
    assert client.put("/v1/collections/x1", json={"index": {"type": "annoy"}}).status_code == 400
    assert client.put("/v1/collections/x1", json={"index": {"type": "hnsw", "m": 0}}).status_code == 400
    assert client.put("/v1/collections/x1", json={"model": "auto"}).status_code == 400
    assert client.put("/v1/collections/x1", json={"metric": "manhattan"}).status_code == 422
    assert client.get("/v1/collections/x1").status_code == 404


def test_search_finds_relevant_first(client, coll):
    r = client.post(f"/v1/collections/{coll}/search", json={"query": "vector similarity search engine", "top_k": 3})
    assert r.status_code == 200
    res = r.json()["results"]
    assert res[0]["id"] == "faiss" and len(res) == 3
    assert res[0]["text"].startswith("FAISS") and res[0]["metadata"]["year"] == 2017
    assert [x["score"] for x in res] == sorted([x["score"] for x in res], reverse=True)


def test_include_and_min_score(client, coll):
    r = client.post(f"/v1/collections/{coll}/search",
                    json={"query": "pets", "top_k": 5, "include": [], "min_score": 0.2}).json()["results"]
    assert all(set(h) == {"id", "score"} for h in r)
    assert all(h["score"] >= 0.2 for h in r) and {h["id"] for h in r} <= {"cat", "dog"}


@pytest.mark.parametrize("flt,expected", [
    ({"kind": "story"}, {"cat", "dog"}),
    ({"year": {"$gte": 2020}}, {"cat", "dog", "tax"}),
    ({"kind": {"$in": ["law", "software"]}}, {"faiss", "redis", "tax"}),
    ({"$or": [{"kind": "law"}, {"year": {"$lt": 2010}}]}, {"tax", "redis"}),
    ({"$not": {"kind": "story"}}, {"faiss", "redis", "tax"}),
    ({"published": {"$gte": "2021-01-01", "$lt": "2022-01-01"}}, {"cat"}),
    ({"tags": "ann"}, {"faiss"}),
])
def test_filters_inside_search(client, coll, flt, expected):
    r = client.post(f"/v1/collections/{coll}/search", json={"query": "anything", "top_k": 10, "filter": flt})
    assert r.status_code == 200, r.text
    assert {h["id"] for h in r.json()["results"]} == expected


def test_invalid_filter_is_400(client, coll):
    for flt in [{"year": {"$gtt": 1}}, {"$or": []}, {"$and": "x"}, {"a": {"$in": []}}]:
        r = client.post(f"/v1/collections/{coll}/search", json={"query": "x", "filter": flt})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_filter", flt


def test_search_by_vector_and_dimension_check(client, coll):
    vec = client.post("/v1/embeddings", json={"input": DOCS[2]["text"]}).json()["data"][0]["embedding"]
    r = client.post(f"/v1/collections/{coll}/search", json={"vector": vec, "top_k": 1})
    assert r.json()["results"][0]["id"] == "cat"
    r = client.post(f"/v1/collections/{coll}/search", json={"vector": [0.1, 0.2], "top_k": 1})
    assert r.status_code == 400 and r.json()["error"]["type"] == "dimension_mismatch"
    r = client.post(f"/v1/collections/{coll}/search", json={"query": "x", "vector": vec})
    assert r.status_code == 422


def test_batch_search(client, coll):
    r = client.post(f"/v1/collections/{coll}/search/batch", json={"searches": [
        {"query": "kitten sleeping", "top_k": 1}, {"query": "tax credit", "top_k": 2, "filter": {"kind": "law"}}]})
    b = r.json()["batches"]
    assert b[0]["results"][0]["id"] == "cat" and [h["id"] for h in b[1]["results"]] == ["tax"]


def test_recommend(client, coll):
    r = client.post(f"/v1/collections/{coll}/recommend", json={"positive": ["cat"], "top_k": 2})
    ids = [h["id"] for h in r.json()["results"]]
    # same order as cosine to the stored vector of "cat", the example itself excluded
    vecs = {d["id"]: np.array(client.get(f"/v1/collections/{coll}/documents/{d['id']}?with_vector=true").json()["vector"])
            for d in DOCS}
    cat = vecs["cat"] / np.linalg.norm(vecs["cat"])
    expected = sorted((k for k in vecs if k != "cat"), key=lambda k: -float(cat @ vecs[k] / np.linalg.norm(vecs[k])))
    assert ids == expected[:2] and "cat" not in ids
    r = client.post(f"/v1/collections/{coll}/recommend", json={"positive": ["cat"], "negative": [expected[0]], "top_k": 4})
    assert expected[0] not in [h["id"] for h in r.json()["results"]][:1]
    r = client.post(f"/v1/collections/{coll}/recommend", json={"positive": ["missing-id"]})
    assert r.status_code == 404


def test_get_page_and_counts(client, coll):
    d = client.get(f"/v1/collections/{coll}/documents/redis").json()
    assert d["metadata"]["year"] == 2009 and "vector" not in d
    d = client.get(f"/v1/collections/{coll}/documents/redis?with_vector=true").json()
    assert len(d["vector"]) == 384
    seen, cursor = [], None
    while True:
        page = client.get(f"/v1/collections/{coll}/documents", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [x["id"] for x in page["documents"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(d["id"] for d in DOCS)
    info = client.get(f"/v1/collections/{coll}").json()
    assert info["count"] == 5 and info["config"]["model"] == "minilm" and info["index_type"] == "flat"
    assert client.get(f"/v1/collections/{coll}/documents", params={"cursor": "garbage!!"}).status_code == 400


def test_replace_and_delete_never_found_again(client):
    client.put("/v1/collections/rd", json={"model": "minilm"})
    client.post("/v1/collections/rd/documents", json={"documents": [
        {"id": "x", "text": "quantum computing with superconducting qubits"},
        {"id": "y", "text": "baking sourdough bread at home"}]})
    old = client.post("/v1/collections/rd/search", json={"query": "qubits", "top_k": 1}).json()["results"][0]
    assert old["id"] == "x"
    # replace x with unrelated text: the old vector must not be found any more
    client.post("/v1/collections/rd/documents", json={"documents": [{"id": "x", "text": "gardening tips for tomatoes"}]})
    res = client.post("/v1/collections/rd/search", json={"query": "qubits", "top_k": 5}).json()["results"]
    assert [h for h in res if h["id"] == "x"][0]["text"].startswith("gardening")
    assert len(res) == 2
    assert client.delete("/v1/collections/rd/documents/y").status_code == 200
    res = client.post("/v1/collections/rd/search", json={"query": "sourdough bread", "top_k": 5}).json()["results"]
    assert [h["id"] for h in res] == ["x"]
    assert client.delete("/v1/collections/rd/documents/y").status_code == 404


def test_result_cache_invalidated_by_writes(client):
    client.put("/v1/collections/cachev", json={"model": "minilm"})
    client.post("/v1/collections/cachev/documents", json={"documents": [{"id": "1", "text": "apples and pears"}]})
    q = {"query": "fruit", "top_k": 5}
    assert [h["id"] for h in client.post("/v1/collections/cachev/search", json=q).json()["results"]] == ["1"]
    assert [h["id"] for h in client.post("/v1/collections/cachev/search", json=q).json()["results"]] == ["1"]
    client.post("/v1/collections/cachev/documents", json={"documents": [{"id": "2", "text": "bananas"}]})
    ids = [h["id"] for h in client.post("/v1/collections/cachev/search", json=q).json()["results"]]
    assert sorted(ids) == ["1", "2"], "a write must invalidate cached results"
    client.post("/v1/collections/cachev/documents/delete", json={"ids": ["1"]})
    ids = [h["id"] for h in client.post("/v1/collections/cachev/search", json=q).json()["results"]]
    assert ids == ["2"]


def test_result_cache_hit_returns_the_same_body_without_encoding(client):
    client.put("/v1/collections/cachehit", json={"model": "minilm"})
    client.post("/v1/collections/cachehit/documents", json={"documents": DOCS})
    texts = lambda: client.app.state.svc.pool.get("minilm").batcher.stats.texts  # noqa: E731
    hits = lambda: client.app.state.svc.cache.stats()["local_hits"]  # noqa: E731
    q = {"query": "a fast vector similarity library", "top_k": 3, "include": ["text", "metadata"],
         "filter": {"kind": "software"}}
    first = client.post("/v1/collections/cachehit/search", json=q)
    encoded, hit_count = texts(), hits()
    second = client.post("/v1/collections/cachehit/search", json=q)
    assert second.status_code == 200 and second.headers["content-type"] == "application/json"
    assert second.json() == first.json() and second.json()["results"][0]["id"] == "faiss"
    assert texts() == encoded and hits() > hit_count  # served from the result cache
    # batch search shares the cached entries and returns the same hits
    batch = client.post("/v1/collections/cachehit/search/batch", json={"searches": [q]}).json()
    assert batch["batches"][0] == first.json()
    # limits are still checked on the cached path
    assert client.post("/v1/collections/cachehit/search", json={**q, "top_k": 10**9}).status_code in (400, 413, 422)


def test_precomputed_vectors_and_vector_only_collection(client):
    assert client.put("/v1/collections/vonly", json={"dim": 4, "metric": "l2"}).status_code == 201
    r = client.post("/v1/collections/vonly/documents", json={"documents": [
        {"id": "a", "vector": [0, 0, 0, 1]}, {"id": "b", "vector": [1, 0, 0, 0]}]})
    assert r.status_code == 200
    r = client.post("/v1/collections/vonly/search", json={"vector": [0.9, 0, 0, 0.1], "top_k": 1})
    assert r.json()["results"][0]["id"] == "b" and r.json()["results"][0]["score"] <= 0
    bad = client.post("/v1/collections/vonly/documents", json={"documents": [{"id": "c", "vector": [1, 2]}]})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "dimension_mismatch"
    bad = client.post("/v1/collections/vonly/documents", json={"documents": [{"id": "c", "text": "no vector"}]})
    assert bad.status_code == 400
    assert client.post("/v1/collections/vonly/search", json={"query": "text"}).status_code == 400
    assert client.get("/v1/collections/vonly/documents/c").status_code == 404, "nothing stored half-way"


def test_bad_upserts(client, coll):
    assert client.post(f"/v1/collections/{coll}/documents", json={"documents": []}).status_code == 422
    assert client.post(f"/v1/collections/{coll}/documents", json={"documents": [{"text": ""}]}).status_code == 422
    r = client.post(f"/v1/collections/{coll}/documents", json={"documents": [{"text": "ok", "metadata": "notadict"}]})
    assert r.status_code == 422
    r = client.post("/v1/collections/nope/documents", json={"documents": [{"text": "ok"}]})
    assert r.status_code == 404
    r = client.post(f"/v1/collections/{coll}/search", json={"query": "x", "top_k": 100000})
    assert r.status_code == 422
    assert client.get(f"/v1/collections/{coll}").json()["count"] == 5


def test_delete_collection(client):
    client.put("/v1/collections/tmpc", json={})
    assert client.delete("/v1/collections/tmpc").status_code == 200
    assert client.get("/v1/collections/tmpc").status_code == 404
    assert client.delete("/v1/collections/tmpc").status_code == 404


def test_generated_ids(client):
    client.put("/v1/collections/gen", json={})
    ids = client.post("/v1/collections/gen/documents", json={"documents": [{"text": "one"}, {"text": "two"}]}).json()["ids"]
    assert len(set(ids)) == 2 and all(len(i) >= 16 for i in ids)
    assert client.get(f"/v1/collections/gen/documents/{ids[0]}").json()["text"] == "one"


@pytest.mark.parametrize("itype", ["flat", "hnsw", "ivf"])
def test_every_index_type_over_http(client, itype):
    name = f"it-{itype}"
    client.put(f"/v1/collections/{name}", json={"model": "minilm", "index": {"type": itype}})
    rng = np.random.default_rng(0)
    docs = [{"id": f"d{i}", "text": f"document number {i} about topic {i % 7}", "metadata": {"g": int(i % 10)}}
            for i in range(120)]
    assert client.post(f"/v1/collections/{name}/documents", json={"documents": docs}).status_code == 200
    r = client.post(f"/v1/collections/{name}/search", json={"query": "topic 3", "top_k": 5, "filter": {"g": 3}})
    res = r.json()["results"]
    assert len(res) == 5 and all(int(h["metadata"]["g"]) == 3 for h in res)
    client.post(f"/v1/collections/{name}/documents/delete", json={"filter": {"g": 3}})
    r = client.post(f"/v1/collections/{name}/search", json={"query": "topic 3", "top_k": 50})
    assert all(int(h["metadata"]["g"]) != 3 for h in r.json()["results"])
    assert rng is not None

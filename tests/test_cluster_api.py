"""POST /v1/cluster through the real app (real minilm int8 model) and the clustering internals."""
from __future__ import annotations

import time

import numpy as np
import pytest

TOPICS = {  # tight topics: the tests check the algorithms, not the encoder's subtlety
    "space": ["The rocket launched into orbit", "NASA launched a new rocket into space",
              "A rocket carried astronauts into orbit", "The space rocket reached orbit",
              "Astronauts flew the rocket to the space station"],
    "baking": ["Bake the bread in a hot oven", "This bread recipe needs flour and yeast",
               "Knead the dough and bake the bread", "Fresh bread baked in the oven",
               "A simple recipe for baking bread"],
    "rates": ["The bank raised interest rates", "Interest rates rose at the central bank",
              "Banks increased their interest rates again", "The central bank cut interest rates",
              "Higher interest rates from the bank"],
}
TEXTS = [t for ts in TOPICS.values() for t in ts]
TRUTH = [k for k, ts in TOPICS.items() for _ in ts]
SHAPE = {"id", "label", "keywords", "size", "members", "representatives"}


def _assignment(body, n):
    lab = np.full(n, -1)
    for c in body["clusters"]:
        lab[c["members"]] = c["id"]
    return lab


def _wait(client, job_id, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_kmeans_shape_and_topics(client):
    from sklearn.metrics import v_measure_score
    r = client.post("/v1/cluster", json={"texts": TEXTS, "algorithm": "kmeans", "k": 3, "seed": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"clusters", "outliers", "silhouette"}
    assert body["outliers"] == [] and 0 < body["silhouette"] <= 1
    assert [c["id"] for c in body["clusters"]] == [0, 1, 2]
    assert sorted(i for c in body["clusters"] for i in c["members"]) == list(range(len(TEXTS)))
    assert v_measure_score(TRUTH, _assignment(body, len(TEXTS))) == pytest.approx(1.0)
    for c in body["clusters"]:
        assert set(c) == SHAPE and c["size"] == len(c["members"])
        assert set(c["representatives"]) <= {TEXTS[i] for i in c["members"]}
        assert len(c["representatives"]) == 3 and c["keywords"] and c["label"]
        assert not {"the", "and", "with"} & set(c["keywords"])  # English stop words dropped
    labels = " ".join(c["label"] for c in body["clusters"])
    assert "bread" in labels and "rates" in labels and "rocket" in labels


def test_kmeans_auto_k_and_determinism(client):
    body = {"texts": TEXTS, "algorithm": "kmeans", "k_min": 2, "k_max": 6, "seed": 7}
    a = client.post("/v1/cluster", json=body)
    assert a.status_code == 200, a.text
    assert len(a.json()["clusters"]) == 3          # the silhouette picks the three topics
    assert client.post("/v1/cluster", json=body).json() == a.json()
    other = client.post("/v1/cluster", json={**body, "seed": 8}).json()
    assert _assignment(other, len(TEXTS)).tolist() == _assignment(a.json(), len(TEXTS)).tolist()


@pytest.mark.parametrize("params", [
    {"algorithm": "agglomerative", "distance_threshold": 0.8},
    {"algorithm": "agglomerative", "k": 4},  # the unrelated text is a cluster of its own
    {"algorithm": "community", "threshold": 0.3, "min_community_size": 3},
    {"algorithm": "hdbscan", "min_cluster_size": 3},
])
def test_other_algorithms_find_the_topics(client, params):
    from sklearn.metrics import v_measure_score
    texts = TEXTS + ["Completely unrelated: my cat sleeps on the sofa"]
    r = client.post("/v1/cluster", json={"texts": texts, **params})
    assert r.status_code == 200, r.text
    body = r.json()
    members = [i for c in body["clusters"] for i in c["members"]]
    assert sorted(members + body["outliers"]) == list(range(len(texts)))
    assert len(set(members)) == len(members)
    sizes = [c["size"] for c in body["clusters"]]
    assert sizes == sorted(sizes, reverse=True)
    lab = _assignment(body, len(texts))[:-1]
    keep = lab >= 0
    assert keep.sum() >= 12 and v_measure_score(np.array(TRUTH)[keep], lab[keep]) > 0.85
    assert client.post("/v1/cluster", json={"texts": texts, **params}).json() == body


def test_community_leaves_outliers(client):
    texts = TEXTS[:5] + ["Knit a warm scarf from wool"]
    body = client.post("/v1/cluster", json={"texts": texts, "algorithm": "community",
                                            "threshold": 0.3, "min_community_size": 3}).json()
    assert 5 in body["outliers"] and len(body["clusters"]) == 1


@pytest.mark.parametrize("body,status,kind", [
    ({"texts": TEXTS[:3], "k": 4}, 422, "k_too_large"),
    ({"texts": ["only one"]}, 422, "too_few_texts"),
    ({"texts": ["one", "two"], "algorithm": "kmeans"}, 422, "too_few_texts"),
    ({"texts": []}, 422, "empty_input"),
    ({"texts": ["ok", " "]}, 422, "empty_text"),
    ({}, 422, "validation_error"),
    ({"texts": ["a", "b"], "collection": "c"}, 422, "validation_error"),
    ({"texts": ["a", "b"], "filter": {"x": 1}}, 422, "validation_error"),
    ({"texts": ["a", "b", "c"], "algorithm": "spectral"}, 422, "validation_error"),
    ({"texts": ["a", "b", "c"], "k": 1}, 422, "validation_error"),
    ({"texts": ["a", "b", "c"], "k_min": 5, "k_max": 3}, 422, "validation_error"),
    ({"texts": ["a", "b", "c"], "algorithm": "hdbscan", "min_cluster_size": 5}, 422,
     "min_cluster_size_too_large"),
    ({"texts": ["a", "b", "c"], "model": "nope"}, 404, "model_not_found"),
    ({"collection": "does-not-exist"}, 404, "collection_not_found"),
    ({"collection": "bad/name"}, 400, "invalid_name"),
])
def test_cluster_bad_input(client, body, status, kind):
    r = client.post("/v1/cluster", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind


def test_kmeans_v_measure_on_newsgroups(client):
    from sklearn.metrics import v_measure_score

    from models.datasets import newsgroups
    raw = newsgroups(strip_headers=False)   # as in the figure (0.93 on all 200 posts)
    idx = [i for lab in ("atheism", "space") for i in
           [j for j, y in enumerate(raw.labels) if y == lab][:30]]
    texts, truth = [raw.texts[i] for i in idx], [raw.labels[i] for i in idx]
    r = client.post("/v1/cluster", json={"texts": texts, "k": 2, "seed": 0})
    assert r.status_code == 200
    assert v_measure_score(truth, _assignment(r.json(), len(texts))) >= 0.80


def test_background_job_for_texts(client):
    r = client.post("/v1/cluster", json={"texts": TEXTS, "k": 3, "background": True})
    assert r.status_code == 202, r.text
    job = _wait(client, r.json()["job_id"])
    assert job["status"] == "succeeded" and job["progress"] == 1
    assert job["result"] == client.post("/v1/cluster", json={"texts": TEXTS, "k": 3}).json()


def test_cluster_collection_as_job(client):
    assert client.put("/v1/collections/clu", json={"model": "minilm"}).status_code in (200, 201)
    docs = [{"id": f"d{i}", "text": t, "metadata": {"topic": TRUTH[i], "lang": "en" if i % 5 else "fr"}}
            for i, t in enumerate(TEXTS)]
    assert client.post("/v1/collections/clu/documents", json={"documents": docs}).status_code == 200
    r = client.post("/v1/cluster", json={"collection": "clu", "k": 3, "seed": 0})
    assert r.status_code == 202 and r.headers["location"].startswith("/v1/jobs/")
    job = _wait(client, r.json()["job_id"])
    assert job["status"] == "succeeded", job
    clusters = job["result"]["clusters"]
    assert sorted(m for c in clusters for m in c["members"]) == sorted(d["id"] for d in docs)
    for c in clusters:
        assert len({TRUTH[int(m[1:])] for m in c["members"]}) == 1
    # a filter restricts the documents; members are document ids
    r = client.post("/v1/cluster", json={"collection": "clu", "filter": {"lang": "en"}, "k": 3})
    job = _wait(client, r.json()["job_id"])
    members = {m for c in job["result"]["clusters"] for m in c["members"]}
    assert members == {d["id"] for d in docs if d["metadata"]["lang"] == "en"}
    # errors found before the job starts, or reported by the job
    assert client.post("/v1/cluster", json={"collection": "clu", "filter": {"x": {"$bad": 1}}}
                       ).json()["error"]["type"] == "invalid_filter"
    r = client.post("/v1/cluster", json={"collection": "clu", "filter": {"lang": "de"}})
    job = _wait(client, r.json()["job_id"])
    assert job["status"] == "failed" and job["error"]["type"] == "too_few_documents"
    r = client.post("/v1/cluster", json={"collection": "clu", "k": 40})
    job = _wait(client, r.json()["job_id"])
    assert job["status"] == "failed" and job["error"]["type"] == "k_too_large"


# ---------------------------------------------------------------------------- internals
def test_community_detection_matches_definition():
    from app.services.clustering import community_detection
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:3]
    x = np.vstack([c + 0.05 * rng.standard_normal((6, 8)) for c in centres] + [np.eye(8)[5:6]])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = community_detection(x, threshold=0.8, min_size=4, chunk=5)
    assert labels[-1] == -1
    for g in range(3):
        assert len(set(labels[g * 6:(g + 1) * 6])) == 1 and labels[g * 6] >= 0
    assert len(set(labels[:18])) == 3


def test_ctfidf_keywords_are_distinctive():
    from app.services.clustering import ctfidf_keywords
    texts = ["rockets and orbit", "orbit of the rocket", "bread and butter", "butter on bread",
             "the and of"]
    kw = ctfidf_keywords(texts, [[0, 1], [2, 3], [4]], top=3)
    assert {"orbit"} <= set(kw[0]) and {"bread", "butter"} <= set(kw[1])
    assert kw[2] == []  # only stop words
    assert ctfidf_keywords(["the", "and"], [[0], [1]], top=3) == [[], []]

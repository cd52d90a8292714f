"""Zero-shot and trained classifiers through the real app (real minilm int8 model).

Figures use the real data of the issue (20-Newsgroups atheism/space, Pang-Lee polarity from the
gensim wheel) on quick subsets; thresholds sit a bit below what the service reaches on the full
sets (bench/reports/classify.md has the full figures and the command that made them)."""
from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings


@pytest.fixture(scope="module")
def news():
    """30 posts per group, with their headers as in the issue's figures (the header-stripped
    figures are in the bench report: encoding long posts is what makes these tests slow)."""
    from models.datasets import newsgroups
    raw = newsgroups(strip_headers=False)
    idx = [i for lab in ("atheism", "space") for i in
           [j for j, y in enumerate(raw.labels) if y == lab][:30]]
    return [raw.texts[i] for i in idx], [raw.labels[i] for i in idx]


@pytest.fixture(scope="module")
def polarity():
    from models.datasets import polarity
    return polarity()


def _accuracy(results, labels, key="label"):
    return float(np.mean([r[key] == y for r, y in zip(results, labels)]))


def _fewshot_split(labels, per_class, seed):
    rng = np.random.default_rng(seed)
    y = np.array(labels)
    train = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                            for c in sorted(set(labels))])
    return sorted(train.tolist()), sorted(set(range(len(labels))) - set(train.tolist()))


# ---------------------------------------------------------------------------- zero-shot
def test_zero_shot_shape_order_and_scores(client):
    texts = ["Parliament passed the budget bill", "The striker scored twice in the final",
             "The senate votes on the new law"]
    r = client.post("/v1/classify", json={"texts": texts, "labels": ["sport", "politics"]})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert set(r.json()) == {"results"} and [x["label"] for x in res] == ["politics", "sport", "politics"]
    for x in res:
        assert set(x) == {"label", "scores"} and set(x["scores"]) == {"sport", "politics"}
        assert abs(sum(x["scores"].values()) - 1) < 1e-4 and x["scores"][x["label"]] > 0.5
    # a higher temperature flattens the scores but never changes the winner
    flat = client.post("/v1/classify", json={"texts": texts, "labels": ["sport", "politics"],
                                             "temperature": 1.0}).json()["results"]
    assert [x["label"] for x in flat] == ["politics", "sport", "politics"]
    assert max(flat[0]["scores"].values()) < max(res[0]["scores"].values())


def test_zero_shot_descriptions_and_multi_label(client):
    labels = {"space": "space flight, rockets and astronomy", "religion": "religion, god and faith",
              "cooking": "cooking recipes and food"}
    r = client.post("/v1/classify", json={"texts": ["NASA launched a rocket to study the stars",
                                                    "My grandmother's bread recipe"],
                                          "labels": labels, "multi_label": True})
    assert r.status_code == 200, r.text
    a, b = r.json()["results"]
    assert set(a) == {"labels", "scores"} and a["labels"][0] == "space" and "cooking" not in a["labels"]
    assert b["labels"][:1] == ["cooking"] and "space" not in b["labels"]
    assert all(0 <= s <= 1 for s in a["scores"].values())
    r = client.post("/v1/classify", json={"texts": ["NASA launched a rocket"], "labels": labels,
                                          "multi_label": True, "threshold": 1.0})
    assert r.json()["results"][0]["labels"] == []


@pytest.mark.parametrize("body,status,kind", [
    ({"texts": ["x"], "labels": ["only"]}, 422, "too_few_labels"),
    ({"texts": ["x"], "labels": []}, 422, "too_few_labels"),
    ({"texts": ["x"], "labels": ["a", "a"]}, 422, "duplicate_label"),
    ({"texts": ["x"], "labels": ["a", " "]}, 422, "invalid_label"),
    ({"texts": ["x"], "labels": {"a": "fine", "b": ""}}, 422, "invalid_label"),
    ({"texts": [], "labels": ["a", "b"]}, 422, "empty_input"),
    ({"texts": ["ok", "  "], "labels": ["a", "b"]}, 422, "empty_text"),
    ({"texts": ["x"], "labels": ["a", "b"], "model": "nope"}, 404, "model_not_found"),
    ({"texts": ["x"], "labels": ["a", "b"], "temperature": 0}, 422, "validation_error"),
    ({"labels": ["a", "b"]}, 422, "validation_error"),
])
def test_zero_shot_bad_input(client, body, status, kind):
    r = client.post("/v1/classify", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind


def test_zero_shot_figures(client, news, polarity):
    raw, y = news
    res = client.post("/v1/classify", json={"texts": raw, "labels": ["atheism", "space"]}).json()
    assert _accuracy(res["results"], y) >= 0.95          # issue: 0.99 (posts with headers)
    res = client.post("/v1/classify", json={"texts": polarity.texts,
                                            "labels": ["negative", "positive"]}).json()
    # issue: 0.68 (fp32). int8 gives 0.61-0.675: its dynamic quantisation makes an embedding
    # depend on the batch it was encoded in (see bench/reports/classify.md)
    assert _accuracy(res["results"], polarity.labels) >= 0.60


# ---------------------------------------------------------------------------- classifiers
def _train(client, name, texts, ys, **extra):
    return client.put(f"/v1/classifiers/{name}", json={
        "model": "minilm", "examples": [{"text": t, "label": y} for t, y in zip(texts, ys)],
        **extra})


def test_few_shot_figures(client, news, polarity):
    raw, y = news
    accs = []
    for seed in range(3):
        train, test = _fewshot_split(y, 8, seed)
        r = _train(client, "news8", [raw[i] for i in train], [y[i] for i in train], seed=seed)
        assert r.status_code in (200, 201), r.text
        pred = client.post("/v1/classifiers/news8/predict", json={"texts": [raw[i] for i in test]})
        accs.append(_accuracy(pred.json()["predictions"], [y[i] for i in test]))
    assert np.mean(accs) >= 0.93                         # issue: 0.98
    accs = []
    for seed in range(5):
        train, test = _fewshot_split(polarity.labels, 16, seed)
        _train(client, "pol16", [polarity.texts[i] for i in train],
               [polarity.labels[i] for i in train], seed=seed)
        pred = client.post("/v1/classifiers/pol16/predict",
                           json={"texts": [polarity.texts[i] for i in test]})
        accs.append(_accuracy(pred.json()["predictions"], [polarity.labels[i] for i in test]))
    assert np.mean(accs) >= 0.66                         # issue: 0.67; this head ~0.69


def test_classifier_resource_lifecycle(client):
    texts = ["what a great film", "I loved it", "brilliant acting", "a masterpiece",
             "boring and slow", "I hated it", "terrible script", "a waste of time"]
    labels = ["pos"] * 4 + ["neg"] * 4
    r = _train(client, "life-1", texts, labels, labels={"pos": "a positive review",
                                                        "neg": "a negative review"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["labels"] == ["pos", "neg"] and body["examples"] == 8
    cv = body["cross_validation"]
    assert cv["folds"] == 4 and 0 <= cv["accuracy"] <= 1
    assert set(cv["per_label"]["pos"]) == {"precision", "recall", "f1", "support"}
    assert cv["per_label"]["neg"]["support"] == 4
    v1 = body["version"]
    r = client.post("/v1/classifiers/life-1/predict", json={"texts": ["an awful movie", "superb!"]})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert [p["label"] for p in preds] == ["neg", "pos"]
    assert abs(sum(preds[0]["scores"].values()) - 1) < 1e-4
    # cached results are served again, identically
    again = client.post("/v1/classifiers/life-1/predict", json={"texts": ["an awful movie", "superb!"]})
    assert again.json() == r.json()
    assert client.get("/v1/classifiers/life-1").json()["version"] == v1
    assert "life-1" in [c["name"] for c in client.get("/v1/classifiers").json()["classifiers"]]
    # retrain: 200, new version; stale cached results are not used (the labels changed)
    r = _train(client, "life-1", texts, ["good"] * 4 + ["bad"] * 4, prior_weight=0)
    assert r.status_code == 200 and r.json()["version"] != v1
    preds = client.post("/v1/classifiers/life-1/predict", json={"texts": ["an awful movie"]}).json()
    assert set(preds["predictions"][0]["scores"]) == {"good", "bad"}
    assert client.delete("/v1/classifiers/life-1").status_code == 200
    assert client.get("/v1/classifiers/life-1").status_code == 404
    assert client.post("/v1/classifiers/life-1/predict", json={"texts": ["x"]}).status_code == 404
    assert client.delete("/v1/classifiers/life-1").status_code == 404


GOOD = [{"text": "nice", "label": "a"}, {"text": "good", "label": "a"},
        {"text": "bad", "label": "b"}, {"text": "awful", "label": "b"}]


@pytest.mark.parametrize("body,status,kind", [
    ({"examples": [{"text": "x", "label": "a"}, {"text": "y", "label": "a"}]}, 422, "too_few_labels"),
    ({"examples": []}, 422, "empty_input"),
    ({"examples": GOOD[:3]}, 422, "too_few_examples"),
    ({"examples": GOOD, "labels": ["a", "b", "c"]}, 422, "label_without_examples"),
    ({"examples": GOOD, "labels": ["a", "z"]}, 422, "unknown_label"),
    ({"examples": GOOD + [{"text": " ", "label": "a"}]}, 422, "empty_text"),
    ({"examples": GOOD + [{"text": "x", "label": ""}]}, 422, "invalid_label"),
    ({"examples": GOOD, "model": "nope"}, 404, "model_not_found"),
    ({"examples": [{"text": "x"}]}, 422, "validation_error"),
])
def test_training_bad_input_stores_nothing(client, body, status, kind):
    r = client.put("/v1/classifiers/bad-one", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind
    assert client.get("/v1/classifiers/bad-one").status_code == 404


@pytest.mark.parametrize("name", ["a b", "x" * 65, "..", "a.b", "é"])
def test_classifier_names_are_validated(client, name):
    from urllib.parse import quote
    r = client.put(f"/v1/classifiers/{quote(name, safe='')}", json={"examples": GOOD})
    assert r.status_code in (400, 404, 422), r.text
    assert client.post(f"/v1/classifiers/{quote(name, safe='')}/predict",
                       json={"texts": ["x"]}).status_code in (400, 404, 422)


def test_predict_bad_input(client):
    assert _train(client, "pb", [e["text"] for e in GOOD], [e["label"] for e in GOOD]).status_code == 201
    assert client.post("/v1/classifiers/pb/predict", json={"texts": []}).json()["error"]["type"] == "empty_input"
    assert client.post("/v1/classifiers/pb/predict", json={"texts": [""]}).status_code == 422
    assert client.post("/v1/classifiers/nope/predict", json={"texts": ["x"]}).json()["error"]["type"] \
        == "classifier_not_found"


def test_large_training_runs_as_job(client, polarity):
    r = _train(client, "pol-job", polarity.texts * 2, polarity.labels * 2)  # 400 > 300 examples
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert 0 <= job["progress"] <= 1
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.1)
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1 and job["result"]["examples"] == 400
    assert client.get("/v1/classifiers/pol-job").json()["version"] == job["result"]["version"]
    # background=true makes even a small training a job
    r = _train(client, "pol-small", polarity.texts[::5], polarity.labels[::5], background=True)
    assert r.status_code == 202 and "job_id" in r.json()


def test_classifier_survives_restart(tmp_path, built_minilm):
    from app.main import create_app
    texts = ["a rocket launch", "the space station", "orbit of mars", "prayer and god",
             "the church service", "faith and belief"]
    labels = ["space"] * 3 + ["religion"] * 3
    with TestClient(create_app(make_settings(tmp_path))) as c:
        r = _train(c, "keep", texts, labels)
        assert r.status_code == 201
        before = c.post("/v1/classifiers/keep/predict", json={"texts": ["astronauts", "bible"]}).json()
    assert sorted(p.name for p in (tmp_path / "classifiers" / "keep").iterdir())[0] == "classifier.json"
    assert not list((tmp_path / "classifiers" / "keep").rglob("*.pkl"))
    with TestClient(create_app(make_settings(tmp_path))) as c:
        assert c.get("/v1/classifiers/keep").json()["version"] == r.json()["version"]
        after = c.post("/v1/classifiers/keep/predict", json={"texts": ["astronauts", "bible"]}).json()
    assert [p["label"] for p in after["predictions"]] == ["space", "religion"]
    for a, b in zip(before["predictions"], after["predictions"]):
        assert a["label"] == b["label"]
        assert all(abs(a["scores"][k] - b["scores"][k]) < 1e-5 for k in a["scores"])

from __future__ import annotations

import numpy as np


def test_source_targets_in_order(client):
    r = client.post("/v1/similarity", json={"source": "How do I reset my password?",
                                            "targets": ["Opening hours of the shop",
                                                        "Steps to recover a forgotten password"]})
    assert r.status_code == 200, r.text
    s = r.json()["scores"]
    assert len(s) == 2 and s[1] > s[0] + 0.2 and all(-1 <= x <= 1 for x in s)


def test_matrix_matches_embeddings(client):
    a, b = ["heart attack", "tax return"], ["myocardial infarction", "income tax filing", "football"]
    m = np.array(client.post("/v1/similarity", json={"texts_a": a, "texts_b": b}).json()["matrix"])
    assert m.shape == (2, 3)
    ea = np.array([d["embedding"] for d in client.post("/v1/embeddings", json={"input": a}).json()["data"]])
    eb = np.array([d["embedding"] for d in client.post("/v1/embeddings", json={"input": b}).json()["data"]])
    assert np.allclose(m, ea @ eb.T, atol=1e-4)
    assert m[0].argmax() == 0 and m[1].argmax() == 1


def test_pairs_mining_finds_paraphrases(client):
    texts = ["The cat sits outside", "A man is playing guitar", "The new movie is awesome",
             "The cat is sitting outdoors", "A man plays the guitar", "Stocks fell sharply today"]
    r = client.post("/v1/similarity/pairs", json={"texts": texts, "threshold": 0.7, "top_k": 10})
    assert r.status_code == 200
    pairs = {(p["i"], p["j"]) for p in r.json()["pairs"]}
    assert pairs == {(0, 3), (1, 4)}
    scores = [p["score"] for p in r.json()["pairs"]]
    assert scores == sorted(scores, reverse=True)


def test_similarity_bad_input(client):
    cases = [
        ({"source": "x"}, 422),
        ({"source": "x", "targets": []}, 422),
        ({"texts_a": ["a"], "targets": ["b"], "source": "c"}, 422),
        ({"texts_a": ["a"], "texts_b": [""]}, 422),
        ({}, 422),
        ({"source": "x", "targets": ["y"], "model": "nope"}, 404),
    ]
    for body, status in cases:
        r = client.post("/v1/similarity", json=body)
        assert r.status_code == status, (body, r.text)
        assert "error" in r.json()
    r = client.post("/v1/similarity/pairs", json={"texts": ["a"], "threshold": 2})
    assert r.status_code == 422

"""The built domain encoders: registered, evaluated in their metadata, and better than minilm
on held-out concepts of their own domain (checked live on a small sample)."""
from __future__ import annotations

import numpy as np
import pytest

from models.adapt.corpora import DOMAINS

METRICS = ("recall@1", "recall@10", "mrr", "queries", "lee_pearson")


@pytest.fixture(scope="module")
def domain_builds(built_minilm):
    from models.build import build
    from models.registry import find_built, load_registry

    for domain in DOMAINS:
        build(domain)                     # no-op when the cache is current (make test builds them)
    specs = load_registry()
    return {d: find_built(specs[d], specs) for d in DOMAINS}


@pytest.mark.parametrize("domain", DOMAINS)
def test_registered_with_evaluation_figures(domain, domain_builds):
    from models.registry import load_registry

    spec = load_registry()[domain]
    assert (spec.source, spec.base, spec.domain, spec.dim) == ("adapted", "minilm", domain, 384)
    built = domain_builds[domain]
    assert built is not None and built.onnx_path("int8").exists() and built.tokenizer_path.exists()
    ad = built.meta["adaptation"]
    for key in ("corpus_packages", "methods", "steps", "pairs", "seed", "training_seconds", "added_tokens",
                "onnx_fidelity_min_cosine", "build_seconds_total"):
        assert key in ad, key
    assert ad["corpus_packages"] == list(spec.packages)
    assert "contrastive-mnrl" in ad["methods"]
    assert ("vocabulary" in ad["methods"]) == (ad["added_tokens"] > 0) == bool(spec.adapt.get("vocab"))
    assert ad["onnx_fidelity_min_cosine"] >= 0.9999
    ev = built.meta["evaluation"]
    assert ev["queries"] >= 300 and ev["corpus_size"] >= 2000
    for who in ("base", "adapted"):
        for precision in ("fp32", "int8"):
            assert all(k in ev[who][precision] for k in METRICS), (who, precision)
    # the requirement of the issue, on the full held-out set
    assert ev["adapted"]["fp32"]["recall@10"] > ev["base"]["fp32"]["recall@10"]
    assert ev["adapted"]["int8"]["recall@10"] > ev["base"]["int8"]["recall@10"]
    assert ev["base"]["fp32"]["lee_pearson"] - ev["adapted"]["fp32"]["lee_pearson"] < 0.03


@pytest.mark.parametrize("domain", DOMAINS)
def test_live_heldout_sample_beats_base(domain, domain_builds, built_minilm):
    from models.adapt.pipeline import heldout_sample
    from models.encoder import OnnxEncoder
    from models.evaluate import retrieval_metrics

    ev = heldout_sample(domain, 150, seed=7)
    rng = np.random.default_rng(7)
    keep = sorted(set(ev.relevant) | set(rng.choice(len(ev.documents), size=min(1000, len(ev.documents)),
                                                   replace=False).tolist()))
    pos = {d: i for i, d in enumerate(keep)}
    docs = [ev.documents[i] for i in keep]
    relevant = [pos[r] for r in ev.relevant]
    scores = {}
    for name, built in (("base", built_minilm), ("adapted", domain_builds[domain])):
        enc = OnnxEncoder(built, "int8")
        scores[name] = retrieval_metrics(enc.encode(ev.queries).vectors, enc.encode(docs).vectors, relevant)
    assert scores["adapted"]["recall@10"] > scores["base"]["recall@10"], scores


def test_evaluate_cli_scores_domain_encoders(domain_builds, tmp_path, capsys):
    import json

    from models.cli import main

    pairs = tmp_path / "pairs.jsonl"
    rows = [("heart attack", "Myocardial infarction"), ("high blood pressure", "Hypertension"),
            ("short stature", "Short stature"), ("kidney stones", "Nephrolithiasis")]
    pairs.write_text("\n".join(json.dumps({"query": q, "document": d}) for q, d in rows) + "\n")
    assert main(["evaluate", "--model", "medical", "--pairs", str(pairs)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "medical" and report["queries"] == 4 and report["recall@10"] == 1.0
    assert main(["evaluate", "--model", "finance", "--domain", "finance", "--sample", "40",
                 "--precision", "int8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["queries"] == 40 and report["corpus_size"] > 5000 and 0 < report["recall@10"] <= 1

"""Domain corpora read from the package files: plausible sizes and a clean held-out split."""
from __future__ import annotations

import pytest

from models.adapt.corpora import DOMAINS, load_corpus
from models.adapt.pipeline import DEFAULT_RECIPE, domain_spec, recipe_for, split_and_sets
from models.adapt.yamlish import front_matter, parse
from models.registry import load_registry

# (concepts, queries) lower bounds and concept upper bounds, from the pinned package versions
RANGES = {
    "medical": (15_000, 25_000, 15_000),    # ~19k non-obsolete HPO terms, ~20k exact synonyms
    "legal": (2_000, 3_000, 10_000),        # ~2.5k active licenses, ~22k notice/reference rules
    "finance": (5_000, 8_000, 5_000),       # ~6.7k labelled parameters, one description each
}


@pytest.mark.parametrize("domain", DOMAINS)
def test_corpus_counts_plausible(domain):
    corpus = load_corpus(domain)
    lo, hi, min_queries = RANGES[domain]
    assert lo <= len(corpus.concepts) <= hi
    assert sum(len(c.queries) for c in corpus.concepts) >= min_queries
    assert len({c.cid for c in corpus.concepts}) == len(corpus.concepts)
    assert all(c.doc.strip() for c in corpus.concepts)


@pytest.mark.parametrize("domain", DOMAINS)
def test_split_is_by_concept_and_training_never_sees_heldout(domain):
    recipe = recipe_for(domain_spec(domain, load_registry()))
    corpus, train, held, ev, pairs = split_and_sets(domain, recipe)
    train_ids, held_ids = {c.cid for c in train}, {c.cid for c in held}
    assert not train_ids & held_ids
    assert len(train_ids) + len(held_ids) == len(corpus.concepts)
    assert 0.15 < len(held) / len(corpus.concepts) < 0.25
    assert {p[3] for p in pairs} <= train_ids                   # pairs come from training concepts
    docs, doc_of = corpus.documents()
    held_docs = {doc_of[c.cid] for c in held}
    assert set(ev.relevant) <= held_docs                        # queries target held-out concepts
    assert len(ev.documents) == len(docs)                       # search space = whole corpus
    held_queries = {q for c in held for q, _ in c.queries}
    assert set(ev.queries) <= held_queries
    # deterministic: the same seed gives the same split
    assert {c.cid for c in corpus.split(recipe["seed"], recipe["heldout_fraction"])[1]} == held_ids
    assert DEFAULT_RECIPE["seed"] == 42


def test_medical_layperson_synonyms_are_queries():
    corpus = load_corpus("medical")
    kinds = [k for c in corpus.concepts for _, k in c.queries]
    assert 5_000 < kinds.count("layperson") < 10_000


def test_yamlish_reads_the_subset_the_corpora_use():
    text = ("description: The IRS phases out the credit\n  above this income.\nmetadata:\n  label: EITC phase-out start\n"
            "  breakdown:\n  - filing_status\n  reference:\n    - title: 26 U.S. Code § 32(b)\n"
            "      href: https://example.org\n    - title: \"Form 1040 # line 27\" # a comment\nvalues:\n  2020-01-01: 1\n")
    data = parse(text, keys=("description", "metadata"))
    assert data["description"] == "The IRS phases out the credit above this income."
    assert data["metadata"]["label"] == "EITC phase-out start"
    assert data["metadata"]["breakdown"] == ["filing_status"]
    assert [r["title"] for r in data["metadata"]["reference"]] == ["26 U.S. Code § 32(b)", "Form 1040 # line 27"]
    assert "values" not in data
    head, body = front_matter("---\nkey: mit\nname: MIT License\n---\n\nPermission is hereby granted")
    assert head == {"key": "mit", "name": "MIT License"} and body.startswith("Permission")

"""Shared by the locust profiles: real text, request bodies, and collection seeding.

Text comes from the gensim 4.4.0 wheel (models.datasets): the 300-document Lee background news
corpus and the 200-post 20-Newsgroups subset (alt.atheism / sci.space).  Documents are indexed
with metadata (source, group, year, length) so searches can use filters the way a user would.

Environment (all optional): LOAD_COLLECTION (default "loadtest"), LOAD_MODEL ("minilm"),
LOAD_SEED_DOCS (how many documents to index before the run, default 300),
SEMSEARCH_API_KEY (sent as a Bearer token; needs the write scope for seeding and upserts).
"""
from __future__ import annotations

import logging
import os
import random
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # locust imports a locustfile by path, not as a package
    sys.path.insert(0, str(REPO_ROOT))

log = logging.getLogger("locustfiles")

COLLECTION = os.environ.get("LOAD_COLLECTION", "loadtest")
MODEL = os.environ.get("LOAD_MODEL", "minilm")
SEED_DOCS = int(os.environ.get("LOAD_SEED_DOCS", "300"))
UPSERT_ID_POOL = 500      # upserts overwrite within a bounded id space: the collection stays bounded
CLASSIFY_LABELS = ["space exploration", "religion and atheism", "politics", "sport",
                   "business and finance", "crime and justice", "weather and disasters"]


@dataclass
class Doc:
    id: str
    text: str
    metadata: dict[str, Any]


@lru_cache(maxsize=1)
def corpus() -> list[Doc]:
    from models.datasets import lee_background, newsgroups

    rng = random.Random(7)
    docs = [Doc(f"lee-{i}", t, {"source": "lee", "year": rng.randint(1995, 2005), "length": len(t)})
            for i, t in enumerate(lee_background())]
    ng = newsgroups()
    docs += [Doc(f"ng-{i}", t, {"source": "newsgroups", "group": g, "year": rng.randint(1990, 1995),
                                 "length": len(t)})
             for i, (t, g) in enumerate(zip(ng.texts, ng.labels))]
    rng.shuffle(docs)
    return docs


@lru_cache(maxsize=1)
def sentences() -> list[str]:
    """Sentences of 6..40 words from the corpus: what a person types as a query."""
    out = []
    for d in corpus():
        for s in re.split(r"(?<=[.!?])\s+", " ".join(d.text.split())):
            if 6 <= len(s.split()) <= 40:
                out.append(s)
    return out


def query(rng: random.Random) -> str:
    words = rng.choice(sentences()).split()
    n = rng.randint(4, min(14, len(words)))
    start = rng.randint(0, len(words) - n)
    return " ".join(words[start:start + n])


def search_body(rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {"query": query(rng), "top_k": rng.choice([5, 10, 10, 20])}
    r = rng.random()
    if r < 0.2:
        body["filter"] = {"source": rng.choice(["lee", "newsgroups"])}
    elif r < 0.3:
        lo = rng.randint(1990, 2000)
        body["filter"] = {"year": {"$gte": lo, "$lt": lo + 5}}
    return body


def upsert_body(rng: random.Random) -> dict[str, Any]:
    docs = []
    for _ in range(rng.randint(1, 4)):
        d = rng.choice(corpus())
        text = " ".join(rng.sample(sentences(), k=rng.randint(1, 3)))
        docs.append({"id": f"user-{rng.randrange(UPSERT_ID_POOL)}", "text": text,
                     "metadata": {**d.metadata, "source": "user", "length": len(text)}})
    return {"documents": docs}


def auth_headers() -> dict[str, str]:
    key = os.environ.get("SEMSEARCH_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def seed(host: str, n_docs: int = SEED_DOCS, timeout_s: float = 300.0) -> None:
    """Create the collection (idempotent) and index the first `n_docs` corpus documents
    (n_docs=0 only makes sure the collection exists)."""
    import httpx

    with httpx.Client(base_url=host.rstrip("/"), headers=auth_headers(), timeout=timeout_s) as c:
        body = {"model": MODEL, "index": {"type": "flat"}, "metric": "cosine"}
        r = c.put(f"/v1/collections/{COLLECTION}", json=body)
        if not r.is_success:
            raise RuntimeError(f"creating collection {COLLECTION!r} failed: {r.status_code} {r.text[:500]}")
        docs = corpus()[:n_docs]
        for i in range(0, len(docs), 32):
            batch = [{"id": d.id, "text": d.text, "metadata": d.metadata} for d in docs[i:i + 32]]
            r = c.post(f"/v1/collections/{COLLECTION}/documents", json={"documents": batch})
            if not r.is_success:
                raise RuntimeError(f"seeding failed: {r.status_code} {r.text[:500]}")
        log.info("seeded %s with %d documents", COLLECTION, len(docs))

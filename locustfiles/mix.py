"""The realistic user mix: search 60%, embeddings 15%, similarity 10%, classify 5%, upserts 10%.

Every user waits LOAD_THINK_MIN..LOAD_THINK_MAX seconds (default 0.5..2) between requests, as a
person or a calling service would.  The collection is created and seeded once at test start
(locustfiles/common.py).  Run it with `make load` / `python -m locustfiles.run`, or directly:

    locust -f locustfiles/mix.py --headless -u 20 -r 5 -t 60s --host http://127.0.0.1:8000
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from locustfiles.common import (CLASSIFY_LABELS, COLLECTION, MODEL, SEED_DOCS,  # noqa: E402
                                auth_headers, corpus, query, search_body, seed, sentences,
                                upsert_body)

THINK_MIN = float(os.environ.get("LOAD_THINK_MIN", "0.5"))
THINK_MAX = float(os.environ.get("LOAD_THINK_MAX", "2.0"))


@events.test_start.add_listener
def _seed(environment: Any, **_: Any) -> None:
    # locustfiles.run seeds before starting locust (so seeding does not eat the run time) and
    # sets LOAD_SEEDED=1; then this only makes sure the collection exists.
    try:
        seed(environment.host, 0 if os.environ.get("LOAD_SEEDED") == "1" else SEED_DOCS)
    except Exception as exc:  # noqa: BLE001 - reported as a failed request, so the run fails
        environment.events.request.fire(request_type="SEED", name="seed collection", response_time=0,
                                        response_length=0, exception=exc, context={})
    corpus(), sentences()  # load the text once, before users start


class SearchServiceUser(HttpUser):
    wait_time = between(THINK_MIN, THINK_MAX)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.client.headers.update(auth_headers())

    @task(60)
    def search(self) -> None:
        self.client.post(f"/v1/collections/{COLLECTION}/search", json=search_body(self.rng),
                         name="/v1/collections/{name}/search")

    @task(15)
    def embeddings(self) -> None:
        texts = [self.rng.choice(sentences()) for _ in range(self.rng.choice([1, 1, 2, 4, 8]))]
        self.client.post("/v1/embeddings", json={"input": texts, "model": MODEL}, name="/v1/embeddings")

    @task(10)
    def similarity(self) -> None:
        rng = self.rng
        if rng.random() < 0.5:
            body = {"source": query(rng), "targets": [query(rng) for _ in range(rng.randint(2, 10))]}
        else:
            body = {"texts_a": [query(rng) for _ in range(rng.randint(1, 4))],
                    "texts_b": [query(rng) for _ in range(rng.randint(1, 6))]}
        self.client.post("/v1/similarity", json={"model": MODEL, **body}, name="/v1/similarity")

    @task(5)
    def classify(self) -> None:
        texts = [self.rng.choice(sentences()) for _ in range(self.rng.randint(1, 4))]
        labels = self.rng.sample(CLASSIFY_LABELS, k=self.rng.randint(2, len(CLASSIFY_LABELS)))
        self.client.post("/v1/classify", json={"texts": texts, "labels": labels}, name="/v1/classify")

    @task(10)
    def upsert(self) -> None:
        self.client.post(f"/v1/collections/{COLLECTION}/documents", json=upsert_body(self.rng),
                         name="/v1/collections/{name}/documents")

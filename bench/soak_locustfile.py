"""Locust profile for the soak benchmark (bench/bench_soak.py): the realistic mix of
locustfiles/mix.py (search, embeddings, similarity, classify, upserts) plus one user that takes
and deletes a collection snapshot every minute.  Every request is appended to $SOAK_REQUEST_LOG
as ``unix_time<TAB>name<TAB>ms<TAB>ok`` so the report can compute percentiles per time window.
"""
from __future__ import annotations

import atexit
import os
import sys
import time
from pathlib import Path
from typing import Any

from locust import HttpUser, constant, events, task

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from locustfiles.common import COLLECTION, auth_headers  # noqa: E402
from locustfiles.mix import SearchServiceUser  # noqa: E402,F401  (the user mix)

_LOG = open(os.environ.get("SOAK_REQUEST_LOG", os.devnull), "a", buffering=1 << 16)
atexit.register(_LOG.close)


@events.request.add_listener
def _record(request_type: str, name: str, response_time: float, exception: Any = None,
            **_: Any) -> None:
    _LOG.write(f"{time.time():.3f}\t{request_type} {name}\t{response_time:.2f}\t"
               f"{0 if exception else 1}\n")


@events.quitting.add_listener
def _flush(**_: Any) -> None:
    _LOG.flush()


class SnapshotUser(HttpUser):
    """One user: snapshot the collection every minute, then delete that archive."""

    fixed_count = 1
    wait_time = constant(60)

    def on_start(self) -> None:
        self.client.headers.update(auth_headers())

    @task
    def snapshot(self) -> None:
        with self.client.post(f"/v1/collections/{COLLECTION}/snapshot",
                              name="/v1/collections/{name}/snapshot", catch_response=True) as r:
            if r.status_code != 201:
                r.failure(f"snapshot: HTTP {r.status_code}")
                return
            snap = r.json()["snapshot"]
        self.client.delete(f"/v1/collections/{COLLECTION}/snapshots/{snap}",
                           name="/v1/collections/{name}/snapshots/{snapshot}")

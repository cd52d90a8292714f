"""Property-based fuzzing of the whole OpenAPI schema (schemathesis) against the real app.

The app runs in-process (ASGI) with the real minilm encoder and a real data directory that holds
a collection named ``fuzz`` (with documents) before the app starts.  Two passes, each bounded
(``FUZZ_EXAMPLES`` examples per operation, default 15, no deadline):

* ``test_fuzz_any_input``: every parameter generated from the schema, valid and invalid
  (path names, ids, bodies, query strings);
* ``test_fuzz_existing_collection``: the same with the path parameter ``name`` pinned to the
  existing ``fuzz`` collection, so bodies reach search, upsert, filters, snapshots, restore.
  (Deleting that collection is left out of this pass, or every later case would be a 404.)

Every response must be a non-5xx response whose status code, content type, headers and body
match what the schema documents (schemathesis' default checks).  Authentication is on: cases
are sent with a write key, and schemathesis' own auth check sends invalid credentials and
expects 401 (tests/test_security.py covers scopes).
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from schemathesis.specs.openapi import checks
from hypothesis import HealthCheck, settings

from tests.conftest import make_settings

KEY = "fuzz-write-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))


# Not run: positive_data_acceptance (a schema-valid body may still break a rule JSON Schema cannot
# state: "query or vector, not both", a vector of the collection's dimension, a non-blank text)
# and negative_data_rejection (pydantic's lax mode accepts e.g. `false` for a number).  Every
# other default check runs: no 5xx, documented status codes, content types, headers and body
# schemas, Allow on 405, 401 for invalid credentials.
LENIENT = [checks.positive_data_acceptance, checks.negative_data_rejection]


def _seed_collection(data_dir: Path) -> None:
    """A real collection on disk before the app opens it (the app then owns its lock)."""
    from index import CollectionManager, DocumentIn

    manager = CollectionManager(data_dir)
    col, _ = manager.create("fuzz", {"dim": 384, "metric": "cosine", "model": "minilm",
                                     "index": {"type": "flat"}})
    rng = np.random.default_rng(0)
    col.upsert([DocumentIn(text=f"document {i}", vector=rng.standard_normal(384).astype(np.float32),
                           id=f"doc-{i}", metadata={"year": 2000 + i, "lang": ["en", "de"][i % 2]})
                for i in range(20)])
    manager.close_all()


def _make_app():
    from app.main import create_app

    tmp = Path(tempfile.mkdtemp(prefix="semsearch-fuzz-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    _seed_collection(tmp / "data")
    return create_app(make_settings(tmp / "data", api_keys=f"{KEY}:write", max_texts_per_request=64,
                                    max_pairs_texts=64, max_documents_per_upsert=64))


# Built at import without starting the app: the schema comes from app.openapi(); schemathesis
# starts the app's lifespan (loading the encoder) at the first call and keeps it running.
APP = _make_app()
_RAW = APP.openapi()


def _schema(config: dict | None = None) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_dict(
        _RAW, config=schemathesis.Config.from_dict(config) if config else None)
    schema.app = APP
    schema.location = "/openapi.json"
    return schema


any_input = _schema()
pinned = _schema({"parameters": {"path.name": "fuzz"}})


@any_input.parametrize()
@FUZZ_SETTINGS
def test_fuzz_any_input(case: schemathesis.Case, built_minilm: object) -> None:
    case.call_and_validate(headers=AUTH, excluded_checks=LENIENT)


@pinned.exclude(method="DELETE", path="/v1/collections/{name}").parametrize()
@FUZZ_SETTINGS
def test_fuzz_existing_collection(case: schemathesis.Case, built_minilm: object) -> None:
    case.call_and_validate(headers=AUTH, excluded_checks=LENIENT)

"""Shared fixtures: real encoders, a real app, real redis-server processes."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.redis_server import fresh_redis_server, redis_server  # noqa: F401  (fixtures)

# Make sure tests never talk to the machine's own Redis by accident.
os.environ.pop("REDIS_URL", None)


@pytest.fixture(scope="session")
def built_minilm():
    """The minilm encoder artifacts (built by `make test`'s setup; built here if missing)."""
    from models.build import build
    from models.registry import find_built, load_registry

    build("minilm")
    specs = load_registry()
    return find_built(specs["minilm"], specs)


def make_settings(tmp: Path, **overrides):
    from app.settings import Settings

    base = dict(models="minilm", data_dir=tmp, log_json=False)
    base.update(overrides)
    return Settings(**base)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, built_minilm) -> Iterator[TestClient]:
    """A real app (real minilm int8 ONNX model, local cache only) behind a TestClient."""
    from app.main import create_app

    app = create_app(make_settings(tmp_path_factory.mktemp("data")))
    with TestClient(app) as c:
        yield c

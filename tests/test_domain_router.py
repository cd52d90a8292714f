"""The domain router behind model="auto": numpy-only at run time, trained on the domain corpora."""
from __future__ import annotations

import numpy as np
import pytest

CASES = [
    ("shortness of breath and chest pain", "medical"),
    ("Recurrent urinary tract infections in early childhood", "medical"),
    ("This program is free software; you can redistribute it and/or modify it under the terms of "
     "the GNU General Public License as published by the Free Software Foundation; either version 2 "
     "of the License, or (at your option) any later version.", "legal"),
    ("Licensed under the Apache License, Version 2.0", "legal"),
    ("The earned income tax credit phases out at a rate of 21.06 percent of earnings above the "
     "phase-out threshold for filers with three or more children.", "finance"),
    ("The storm forced thousands of residents to leave their homes on Sunday, officials said.", "general"),
    ("The football team celebrated their victory in the stadium last night", "general"),
]


@pytest.fixture(scope="module")
def router():
    from models.adapt.router import build_router
    from models.domain_router import DomainRouter

    build_router()                        # no-op when the cached router is current
    r = DomainRouter.load()
    assert r is not None
    return r


def test_router_picks_the_domain(router, built_minilm):
    from models.encoder import OnnxEncoder

    enc = OnnxEncoder(built_minilm, router.precision)
    routes = router.route(enc.encode([t for t, _ in CASES]).vectors)
    assert [d for d, _ in routes] == [d for _, d in CASES], routes
    assert all(0.25 < c <= 1.0 for _, c in routes)


def test_router_is_numpy_and_reports_heldout_accuracy(router):
    assert router.labels == ("general", "medical", "legal", "finance")
    assert router.weights.shape == (4, 384) and router.weights.dtype == np.float32
    assert router.meta["heldout_accuracy"] >= 0.9
    assert set(router.meta["heldout_recall_by_domain"]) == set(router.labels)
    p = router.probabilities(np.ones((2, 384), dtype=np.float32))
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    assert router.route(np.zeros((0, 384), dtype=np.float32)) == []
    with pytest.raises(ValueError):
        router.route(np.ones((1, 768), dtype=np.float32))


def test_router_missing_is_none(tmp_path, monkeypatch):
    from models.domain_router import DomainRouter

    monkeypatch.setenv("MODEL_CACHE", str(tmp_path))
    assert DomainRouter.load() is None


def test_encoder_for_domain():
    from models.domain_router import encoder_for_domain

    assert encoder_for_domain("medical") == "medical"
    assert encoder_for_domain("general") == "minilm"

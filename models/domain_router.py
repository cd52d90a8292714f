"""Route texts to a domain (general / medical / legal / finance) from base-encoder embeddings.

Run time is numpy only: a multinomial logistic regression over the (L2-normalised) embeddings
of the base encoder (``minilm``), trained at build time (``python -m models build-router``,
also run by ``python -m models adapt`` and ``build --all``) on texts of the training concepts
of the three domain corpora and on general news/forum/review text (Lee, 20 Newsgroups,
Pang-Lee) as "general".  The weights live in the model cache next to the encoders, keyed
by the base encoder's artifact key and the router code, like every other artifact.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .paths import model_cache_dir
from .registry import EncoderSpec, RegistryError, artifact_key, default_encoder_name, load_registry

ROUTER_BASE = "minilm"
ROUTER_FORMAT = 1
DOMAIN_LABELS = ("general", "medical", "legal", "finance")
# Files whose content determines the router (its training data and procedure).
_ROUTER_CODE = ("domain_router.py", "adapt/router.py", "adapt/corpora.py", "adapt/yamlish.py")


def router_key(specs: dict[str, EncoderSpec] | None = None) -> str:
    specs = specs or load_registry()
    if ROUTER_BASE not in specs:
        raise RegistryError(f"the domain router needs encoder {ROUTER_BASE!r}")
    h = hashlib.sha256()
    h.update(f"format={ROUTER_FORMAT};base={artifact_key(specs[ROUTER_BASE], specs)}".encode())
    here = Path(__file__).parent
    for name in _ROUTER_CODE:
        p = here / name
        h.update(name.encode())
        h.update(p.read_bytes() if p.exists() else b"")
    return h.hexdigest()[:20]


def router_dir(specs: dict[str, EncoderSpec] | None = None) -> Path:
    return model_cache_dir() / "routers" / "domain" / router_key(specs)


@dataclass
class DomainRouter:
    """Multinomial logistic regression: p(domain | embedding) = softmax(W x + b)."""
    labels: tuple[str, ...]
    weights: np.ndarray              # [n_labels, dim]
    bias: np.ndarray                 # [n_labels]
    base: str = ROUTER_BASE
    precision: str = "int8"          # base-encoder precision the router was trained on
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, specs: dict[str, EncoderSpec] | None = None) -> "DomainRouter | None":
        """The built router for the current base encoder, or None when it is not built."""
        try:
            directory = router_dir(specs)
        except (RegistryError, OSError):
            return None
        if not (directory / ".complete").exists():
            return None
        data = np.load(directory / "router.npz", allow_pickle=False)
        meta = json.loads((directory / "router.json").read_text())
        return cls(labels=tuple(str(x) for x in data["labels"]), weights=data["weights"].astype(np.float32),
                   bias=data["bias"].astype(np.float32), base=str(meta.get("base", ROUTER_BASE)),
                   precision=str(meta.get("precision", "int8")), meta=meta)

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.weights.shape[1]:
            raise ValueError(f"expected [n, {self.weights.shape[1]}] {self.base} embeddings, got {x.shape}")
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        logits = x @ self.weights.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def route(self, vectors: np.ndarray) -> list[tuple[str, float]]:
        """Best domain and its probability for each row of ``vectors``."""
        if len(vectors) == 0:
            return []
        p = self.probabilities(vectors)
        best = p.argmax(axis=1)
        return [(self.labels[i], float(p[r, i])) for r, i in enumerate(best)]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / "router.npz", labels=np.array(self.labels), weights=self.weights,
                 bias=self.bias)
        (directory / "router.json").write_text(json.dumps(
            {**self.meta, "base": self.base, "precision": self.precision, "labels": list(self.labels)},
            indent=2, sort_keys=True))


def encoder_for_domain(domain: str, specs: dict[str, EncoderSpec] | None = None) -> str:
    """Encoder name serving ``domain``: the adapted encoder of that domain, else the default."""
    specs = specs or load_registry()
    for spec in specs.values():
        if spec.source == "adapted" and spec.domain == domain:
            return spec.name
    return default_encoder_name(specs)

"""Build the domain router (see ``models/domain_router.py``): numpy + scikit-learn, no torch.

Training texts: the training concepts of each domain corpus (names, synonyms, definitions,
license notices, parameter descriptions and labels, ...) and general English text (Lee news
documents and background corpus, 20 Newsgroups posts, Pang-Lee review sentences) split by
document.  Held-out accuracy is measured on held-out concepts and held-out general documents.
"""
from __future__ import annotations

import hashlib
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..domain_router import DOMAIN_LABELS, ROUTER_BASE, DomainRouter, router_dir
from ..registry import find_built, load_registry
from ..sources import file_lock
from .corpora import DOMAINS, Concept, load_corpus

SEED = 42
PER_DOMAIN_TRAIN = 700
PER_DOMAIN_HELD = 300


def _log(msg: str) -> None:
    print(f"[router] {msg}", file=sys.stderr, flush=True)


def _concept_texts(c: Concept) -> list[str]:
    texts = [c.doc] + [q for q, _ in c.queries]
    texts += [a for a, _, k in c.pairs if k not in ("path-label",)]
    texts += [p for _, p, k in c.pairs if k == "reference-title"]
    return [t for t in dict.fromkeys(texts) if len(t) >= 3]


def _sample(texts: list[str], n: int, rng: random.Random) -> list[str]:
    texts = list(dict.fromkeys(texts))
    return rng.sample(texts, n) if len(texts) > n else texts


def _sentences(doc: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+", " ".join(doc.split()))
    return [p for p in parts if len(p.split()) >= 4]


def general_texts() -> list[tuple[str, str]]:
    """(document id, text): sentences and short passages of general English text."""
    from ..datasets import lee_background, lee_benchmark, newsgroups, polarity

    out: list[tuple[str, str]] = []
    docs = [("lee", d) for d in lee_benchmark().documents] + [("bg", d) for d in lee_background()] + \
           [("ng", d[:1500]) for d in newsgroups().texts]
    for i, (src, doc) in enumerate(docs):
        sents = _sentences(doc)
        out.extend((f"{src}{i}", s) for s in sents)
        out.extend((f"{src}{i}", " ".join(sents[j:j + 3])) for j in range(0, len(sents), 3) if len(sents) > 3)
    out.extend((f"pol{i}", t) for i, t in enumerate(polarity().texts))
    return out


def _heldout_doc(doc_id: str) -> bool:
    return int(hashlib.sha256(f"{SEED}:general:{doc_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < 0.2


def router_data(seed: int = SEED, heldout_fraction: float = 0.2) -> tuple[list[str], list[int], list[str], list[int]]:
    rng = random.Random(seed)
    tr_x: list[str] = []
    tr_y: list[int] = []
    he_x: list[str] = []
    he_y: list[int] = []
    for domain in DOMAINS:
        label = DOMAIN_LABELS.index(domain)
        corpus = load_corpus(domain)
        train, held = corpus.split(seed, heldout_fraction)
        a = _sample([t for c in train for t in _concept_texts(c)], PER_DOMAIN_TRAIN, rng)
        b = _sample([t for c in held for t in _concept_texts(c)], PER_DOMAIN_HELD, rng)
        tr_x += a
        tr_y += [label] * len(a)
        he_x += b
        he_y += [label] * len(b)
    gen = general_texts()
    a = _sample([t for d, t in gen if not _heldout_doc(d)], 2 * PER_DOMAIN_TRAIN, rng)
    b = _sample([t for d, t in gen if _heldout_doc(d)], PER_DOMAIN_HELD, rng)
    tr_x += a
    tr_y += [0] * len(a)
    he_x += b
    he_y += [0] * len(b)
    return tr_x, tr_y, he_x, he_y


def build_router(force: bool = False, progress: Callable[[str], None] = _log) -> Path:
    """Train and save the router unless the current one is cached; return its directory."""
    from sklearn.linear_model import LogisticRegression

    from ..build import build as build_encoder
    from ..encoder import OnnxEncoder

    specs = load_registry()
    final = router_dir(specs)
    with file_lock(final.parent / ".router.lock"):
        if (final / ".complete").exists() and not force:
            progress(f"domain router up to date ({final})")
            return final
        t0 = time.time()
        build_encoder(ROUTER_BASE)
        built = find_built(specs[ROUTER_BASE], specs)
        assert built is not None
        precision = specs[ROUTER_BASE].precision
        tr_x, tr_y, he_x, he_y = router_data()
        progress(f"embedding {len(tr_x)} training + {len(he_x)} held-out texts with {ROUTER_BASE} {precision}")
        enc = OnnxEncoder(built, precision, intra_op_threads=2)
        xtr = enc.encode(tr_x).vectors
        xhe = enc.encode(he_x).vectors
        clf = LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced")
        clf.fit(xtr, np.array(tr_y))
        order = [list(clf.classes_).index(i) for i in range(len(DOMAIN_LABELS))]
        router = DomainRouter(labels=DOMAIN_LABELS, weights=clf.coef_[order].astype(np.float32),
                              bias=clf.intercept_[order].astype(np.float32), precision=precision)
        pred = np.array([DOMAIN_LABELS.index(lbl) for lbl, _ in router.route(xhe)])
        truth = np.array(he_y)
        per_class = {lbl: round(float((pred[truth == i] == i).mean()), 4) for i, lbl in enumerate(DOMAIN_LABELS)}
        router.meta = {
            "heldout_accuracy": round(float((pred == truth).mean()), 4),
            "heldout_recall_by_domain": per_class,
            "heldout_texts": len(he_x),
            "train_texts": len(tr_x),
            "train_accuracy": round(float((clf.predict(xtr) == np.array(tr_y)).mean()), 4),
            "model": "multinomial logistic regression (C=4, balanced) on L2-normalised embeddings",
            "base_key": built.directory.name,
            "seconds": round(time.time() - t0, 1),
        }
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".router-", dir=final.parent))
        try:
            router.save(tmp)
            (tmp / ".complete").write_text("ok\n")
            if final.exists():
                shutil.rmtree(final)
            tmp.replace(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        progress(f"domain router: held-out accuracy {router.meta['heldout_accuracy']:.4f} "
                 f"{per_class} in {router.meta['seconds']:.0f}s -> {final}")
        return final

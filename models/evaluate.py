"""Quality figures: Lee document-similarity correlation and retrieval metrics."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

EncodeFn = Callable[[Sequence[str]], np.ndarray]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def lee_pearson(encode: EncodeFn) -> float:
    """Pearson correlation of cosine similarities with Lee et al.'s mean human ratings."""
    from .datasets import lee_benchmark

    bench = lee_benchmark()
    vecs = np.asarray(encode(bench.documents), dtype=np.float64)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    pairs, human = bench.pairs()
    cos = (vecs[pairs[:, 0]] * vecs[pairs[:, 1]]).sum(1)
    return pearson(cos, human)


def retrieval_metrics(query_vecs: np.ndarray, doc_vecs: np.ndarray, relevant: Sequence[int | Sequence[int]],
                      ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """recall@k and MRR for queries whose relevant document indices are given.

    Queries with several relevant documents count as a hit at k when any of them is in the
    top k; MRR uses the best-ranked relevant document.
    """
    q = np.asarray(query_vecs, dtype=np.float32)
    d = np.asarray(doc_vecs, dtype=np.float32)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    hits = {k: 0 for k in ks}
    rr = 0.0
    for start in range(0, len(q), 256):
        sims = q[start:start + 256] @ d.T
        for row, qi in zip(sims, range(start, min(start + 256, len(q)))):
            rel = relevant[qi]
            rel_set = {rel} if isinstance(rel, (int, np.integer)) else set(rel)
            best = max(row[list(rel_set)])
            rank = int((row > best).sum()) + 1   # ties resolved in the query's favour
            for k in ks:
                hits[k] += rank <= k
            rr += 1.0 / rank
    n = max(len(q), 1)
    out = {f"recall@{k}": hits[k] / n for k in ks}
    out["mrr"] = rr / n
    out["queries"] = float(len(q))
    return out


def load_pairs(path: Path) -> tuple[list[str], list[str]]:
    """Read ``{"query": ..., "document": ...}`` JSON lines."""
    queries, docs = [], []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            queries.append(str(row["query"]))
            docs.append(str(row["document"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{lineno}: expected {{\"query\", \"document\"}}: {exc}") from exc
    return queries, docs


def pairs_metrics(encode: EncodeFn, queries: Sequence[str], documents: Sequence[str]) -> dict[str, float]:
    """Each query's relevant document is its paired one; the search space is all distinct documents."""
    doc_list, relevant = pairs_search_space(documents)
    return retrieval_metrics(encode(list(queries)), encode(doc_list), relevant)


def pairs_search_space(documents: Sequence[str]) -> tuple[list[str], list[int]]:
    """Distinct documents (first-seen order) and, per pair, the index of its document."""
    uniq: dict[str, int] = {}
    for doc in documents:
        uniq.setdefault(doc, len(uniq))
    return list(uniq), [uniq[d] for d in documents]

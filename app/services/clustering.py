"""Clustering of unit-normalised embeddings, with c-TF-IDF keyword labels.

Pure numpy / scikit-learn (no I/O, no asyncio): callers run :func:`cluster` in a worker thread.
Every algorithm works on cosine geometry: vectors are L2-normalised first, so euclidean
distance, dot product and cosine similarity order neighbours the same way.

Algorithms
    kmeans         k given, or chosen by the best cosine silhouette over ``k_min..k_max``
    agglomerative  average linkage on cosine distance, cut at ``distance_threshold`` (or at k)
    community      Sentence-BERT community detection: a point with at least ``min_community_size``
                   neighbours at cosine >= ``threshold`` seeds a community; the largest
                   communities are taken first and never overlap; the rest are outliers
    hdbscan        density-based (scikit-learn HDBSCAN); points in no dense region are outliers

Determinism: k-means and silhouette sampling use ``seed``; the others are deterministic; ties
are broken by index.  Clusters are numbered by size (largest first), then by first member.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from sklearn.cluster import HDBSCAN, AgglomerativeClustering, KMeans
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.metrics import silhouette_score

from ..errors import ApiError

ALGORITHMS = ("kmeans", "agglomerative", "community", "hdbscan")
SILHOUETTE_SAMPLE = 4000
AGGLOMERATIVE_MAX = 10_000       # O(n^2) memory
Progress = Callable[[float], None]
_NOISE = re.compile(r"\S+@\S+|https?://\S+|www\.\S+")  # e-mail addresses and URLs are not topics


@dataclass
class ClusterParams:
    algorithm: str = "kmeans"
    k: int | None = None
    k_min: int = 2
    k_max: int = 10
    distance_threshold: float = 0.75
    threshold: float = 0.65
    min_community_size: int = 3
    min_cluster_size: int = 5
    min_samples: int | None = None
    seed: int = 0
    n_keywords: int = 8
    n_representatives: int = 3


@dataclass
class ClusterInfo:
    members: list[int]                # positions in the input
    keywords: list[str]
    label: str
    representatives: list[int]        # positions, nearest to the centroid first


@dataclass
class ClusterOutcome:
    clusters: list[ClusterInfo]
    outliers: list[int]
    silhouette: float | None


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _silhouette(x: np.ndarray, labels: np.ndarray, seed: int) -> float | None:
    keep = labels >= 0
    n_clusters = len(np.unique(labels[keep]))
    if n_clusters < 2 or keep.sum() <= n_clusters:
        return None
    sample = SILHOUETTE_SAMPLE if keep.sum() > SILHOUETTE_SAMPLE else None
    return float(silhouette_score(x[keep], labels[keep], metric="cosine",
                                  sample_size=sample, random_state=seed))


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)


def kmeans_auto(x: np.ndarray, p: ClusterParams, progress: Progress) -> np.ndarray:
    n = len(x)
    hi = min(p.k_max, n - 1)
    if hi < p.k_min:
        raise ApiError(422, "too_few_texts",
                       f"choosing k needs more than k_min={p.k_min} texts (got {n})",
                       {"count": n, "k_min": p.k_min})
    best: tuple[float, np.ndarray] | None = None
    first: np.ndarray | None = None
    ks = list(range(p.k_min, hi + 1))
    for i, k in enumerate(ks):
        labels = _kmeans(x, k, p.seed)
        first = labels if first is None else first
        score = _silhouette(x, labels, p.seed)
        if score is not None and (best is None or score > best[0] + 1e-9):
            best = (score, labels)
        progress(0.8 * (i + 1) / len(ks))
    # no silhouette at all (e.g. identical texts): fall back to k_min
    return best[1] if best is not None else first


def community_detection(x: np.ndarray, threshold: float, min_size: int,
                        chunk: int = 512) -> np.ndarray:
    """Sentence-BERT's community detection in O(n) memory (rows of the similarity matrix are
    computed in chunks, twice).  Returns labels, -1 for points in no community."""
    n = len(x)
    counts = np.zeros(n, dtype=np.int64)
    for s in range(0, n, chunk):
        counts[s:s + chunk] = (x[s:s + chunk] @ x.T >= threshold).sum(axis=1)
    order = np.argsort(-counts, kind="stable")          # biggest neighbourhoods first
    order = order[counts[order] >= min_size]
    labels = np.full(n, -1, dtype=np.int64)
    next_id = 0
    for s in range(0, len(order), chunk):
        rows = order[s:s + chunk]
        sims = x[rows] @ x.T
        for row, seed_idx in zip(sims, rows):
            if labels[seed_idx] >= 0:
                continue  # already part of a larger community
            members = np.flatnonzero((row >= threshold) & (labels < 0))
            if len(members) >= min_size:
                labels[members] = next_id
                next_id += 1
    return labels


def assign(x: np.ndarray, p: ClusterParams, progress: Progress) -> np.ndarray:
    """Cluster labels per row (-1 = outlier) for normalised vectors ``x``."""
    n = len(x)
    if p.algorithm == "kmeans":
        if p.k is None:
            return kmeans_auto(x, p, progress)
        return _kmeans(x, p.k, p.seed)
    if p.algorithm == "agglomerative":
        if n > AGGLOMERATIVE_MAX:
            raise ApiError(413, "too_many_texts",
                           f"agglomerative clustering handles at most {AGGLOMERATIVE_MAX} texts "
                           f"(got {n}); use kmeans, community or hdbscan",
                           {"count": n, "limit": AGGLOMERATIVE_MAX})
        model = AgglomerativeClustering(
            n_clusters=p.k, distance_threshold=None if p.k else p.distance_threshold,
            metric="cosine", linkage="average")
        return model.fit_predict(x)
    if p.algorithm == "community":
        return community_detection(x, p.threshold, p.min_community_size)
    if p.algorithm == "hdbscan":
        if p.min_cluster_size > n:
            raise ApiError(422, "min_cluster_size_too_large",
                           f"min_cluster_size {p.min_cluster_size} exceeds the {n} texts",
                           {"count": n, "min_cluster_size": p.min_cluster_size})
        if p.min_samples is not None and p.min_samples > n:
            raise ApiError(422, "min_samples_too_large",
                           f"min_samples {p.min_samples} exceeds the {n} texts",
                           {"count": n, "min_samples": p.min_samples})
        return HDBSCAN(min_cluster_size=p.min_cluster_size, min_samples=p.min_samples,
                       metric="euclidean", copy=True).fit_predict(x)
    raise ApiError(422, "unknown_algorithm", f"unknown algorithm {p.algorithm!r}",
                   {"choose_from": list(ALGORITHMS)})


def ctfidf_keywords(texts: Sequence[str], groups: Sequence[Sequence[int]],
                    top: int) -> list[list[str]]:
    """Class-based TF-IDF (as in BERTopic): each cluster's texts are one document; a term's
    weight is its L1-normalised frequency in the cluster times log(1 + A / f), A the average
    number of words per cluster and f the term's frequency over all clusters."""
    if not groups or top <= 0:
        return [[] for _ in groups]
    docs = [" ".join(_NOISE.sub(" ", texts[i]) for i in g) for g in groups]
    vec = CountVectorizer(stop_words="english", lowercase=True,
                          token_pattern=r"(?u)\b[^\W\d_][^\W\d_]+\b")
    try:
        tf = vec.fit_transform(docs).astype(np.float64).toarray()
    except ValueError:  # empty vocabulary: only stop words / numbers
        return [[] for _ in groups]
    words = vec.get_feature_names_out()
    per_class = tf.sum(axis=1, keepdims=True)
    avg_words = per_class.mean()
    freq = tf.sum(axis=0)
    idf = np.log(1.0 + avg_words / np.maximum(freq, 1.0))
    weights = (tf / np.maximum(per_class, 1.0)) * idf
    out = []
    for row in weights:
        order = np.lexsort((words, -row))  # by weight, then alphabetically (deterministic)
        out.append([str(words[j]) for j in order[:top] if row[j] > 0])
    return out


def cluster(vectors: np.ndarray, texts: Sequence[str], p: ClusterParams,
            progress: Progress = lambda f: None) -> ClusterOutcome:
    x = _normalise(vectors)
    n = len(x)
    if n < 2:
        raise ApiError(422, "too_few_texts", f"clustering needs at least 2 texts (got {n})",
                       {"count": n})
    if p.k is not None and p.k > n:
        raise ApiError(422, "k_too_large", f"k={p.k} is larger than the number of texts ({n})",
                       {"k": p.k, "count": n})
    labels = np.asarray(assign(x, p, progress), dtype=np.int64)
    progress(0.85)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels[labels >= 0])]
    groups.sort(key=lambda g: (-len(g), int(g[0])))
    ordered = np.full(n, -1, dtype=np.int64)
    for new_id, g in enumerate(groups):
        ordered[g] = new_id
    sil = _silhouette(x, ordered, p.seed)
    keywords = ctfidf_keywords(texts, [list(map(int, g)) for g in groups], p.n_keywords)
    clusters = []
    for cid, (g, kw) in enumerate(zip(groups, keywords)):
        centroid = x[g].mean(axis=0)
        sims = x[g] @ centroid
        reps = g[np.lexsort((g, -sims))][:p.n_representatives]
        clusters.append(ClusterInfo(members=[int(i) for i in g], keywords=kw,
                                    label=", ".join(kw[:3]) if kw else f"cluster {cid}",
                                    representatives=[int(i) for i in reps]))
    progress(0.95)
    return ClusterOutcome(clusters=clusters, outliers=[int(i) for i in np.flatnonzero(ordered < 0)],
                          silhouette=None if sil is None else round(sil, 6))


# ---------------------------------------------------------------------------- collections
COLLECTION_MAX_DOCUMENTS = 50_000


def load_collection(col, filter_spec, progress: Progress = lambda f: None,
                    limit: int = COLLECTION_MAX_DOCUMENTS, page: int = 1000
                    ) -> tuple[list[str], list[str], np.ndarray]:
    """(ids, texts, vectors) of the documents matching ``filter_spec``, paged through the
    store (blocking: run in a worker thread).  The filter is validated before reading."""
    from index import parse_filter

    limits = getattr(col, "filter_limits", None)
    compiled = parse_filter(filter_spec, **({"max_depth": limits.max_depth,
                                             "max_conditions": limits.max_conditions}
                                            if limits is not None else {}))
    total = max(1, col.count())
    ids: list[str] = []
    texts: list[str] = []
    vectors: list[np.ndarray] = []
    cursor = None
    seen = 0
    while True:
        batch = col.list_documents(cursor, page, include_text=True, include_metadata=True,
                                   include_vector=True)
        for d in batch.documents:
            seen += 1
            if compiled.matches(d.metadata or {}):
                if len(ids) >= limit:
                    raise ApiError(413, "too_many_documents",
                                   f"more than {limit} documents to cluster; narrow the filter",
                                   {"limit": limit})
                ids.append(d.id)
                texts.append(d.text or "")
                vectors.append(np.asarray(d.vector, dtype=np.float32))
        progress(0.3 * min(1.0, seen / total))
        cursor = batch.next_cursor
        if cursor is None:
            break
    return ids, texts, (np.stack(vectors) if vectors else np.empty((0, 0), np.float32))

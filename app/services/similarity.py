"""Similarity helpers over normalised vectors."""
from __future__ import annotations

import numpy as np


def mine_pairs(vectors: np.ndarray, threshold: float, top_k: int, chunk: int = 1024) -> list[tuple[int, int, float]]:
    """All pairs i < j with cosine >= threshold, best first, at most ``top_k``.

    Works in row chunks so memory stays O(chunk x n) rather than O(n^2).
    """
    n = len(vectors)
    found: list[tuple[float, int, int]] = []
    for start in range(0, n, chunk):
        block = vectors[start:start + chunk] @ vectors.T
        rows, cols = np.nonzero(block >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if c > i:
                found.append((float(block[r, c]), i, c))
        if len(found) > 4 * top_k:   # keep memory bounded on near-duplicate-heavy inputs
            found.sort(reverse=True)
            del found[top_k:]
    found.sort(key=lambda x: (-x[0], x[1], x[2]))
    return [(i, j, min(1.0, s)) for s, i, j in found[:top_k]]

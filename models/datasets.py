"""Real evaluation data shipped inside the gensim 4.4.0 wheel (read only, never installed).

- Lee et al. (2005): 50 news documents and a 50x50 matrix of mean human similarity ratings.
- Lee background corpus: 300 news documents (load tests, clustering examples).
- A 200-post 20-Newsgroups subset (alt.atheism vs sci.space).
- 200 Pang-Lee polarity sentences (neg/pos).
"""
from __future__ import annotations

import copyreg
import io
import pickle
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .sources import extract_members

GENSIM_PIN = ("gensim", "4.4.0")
_DATA = "gensim/test/test_data/"
_FILES = ["lee.cor", "lee_background.cor", "similarities0-1.txt", "mini_newsgroup",
          "pang_lee_polarity.cor"]


@lru_cache(maxsize=1)
def data_dir() -> Path:
    root = extract_members(*GENSIM_PIN, members=[_DATA + f for f in _FILES])
    return root / _DATA


@dataclass
class LeeBenchmark:
    documents: list[str]
    ratings: np.ndarray          # [50, 50] symmetric, mean human similarity in [0, 1]

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Upper-triangle index pairs (i < j) and their human ratings."""
        iu = np.triu_indices(len(self.documents), k=1)
        return np.stack(iu, axis=1), self.ratings[iu]


def lee_benchmark() -> LeeBenchmark:
    d = data_dir()
    docs = [line.strip() for line in (d / "lee.cor").read_text(encoding="cp1252", errors="replace").splitlines() if line.strip()]
    rows = [[float(x) for x in line.split()] for line in (d / "similarities0-1.txt").read_text().splitlines() if line.strip()]
    m = np.array(rows, dtype=np.float64)
    m = np.triu(m) + np.triu(m, 1).T  # file holds the upper triangle
    if len(docs) != 50 or m.shape != (50, 50):
        raise ValueError(f"unexpected Lee data: {len(docs)} docs, matrix {m.shape}")
    return LeeBenchmark(documents=docs, ratings=m)


def lee_background() -> list[str]:
    text = (data_dir() / "lee_background.cor").read_text(encoding="cp1252", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass
class LabelledTexts:
    texts: list[str]
    labels: list[str]


class _Bunch(dict):
    pass


def _restricted_unpickle(blob: bytes) -> dict:
    """Unpickle the newsgroup Bunch allowing only the handful of classes it is made of."""
    allowed = {
        ("copy_reg", "_reconstructor"): copyreg._reconstructor,
        ("sklearn.datasets.base", "Bunch"): _Bunch,
        ("__builtin__", "dict"): dict,
        ("__builtin__", "object"): object,
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
            try:
                return allowed[(module, name)]
            except KeyError:
                raise pickle.UnpicklingError(f"{module}.{name} is not allowed") from None

    return Restricted(io.BytesIO(blob), encoding="latin1").load()


def _strip_headers(post: str) -> str:
    """Drop the NNTP header block, keep the Subject line (it is part of what a person reads)."""
    head, sep, body = post.partition("\n\n")
    subject = next((line[len("Subject:"):].strip() for line in head.splitlines()
                    if line.startswith("Subject:")), "")
    body = body if sep else post
    return (subject + "\n" + body).strip()


def newsgroups(strip_headers: bool = True) -> LabelledTexts:
    bunch = _restricted_unpickle(zlib.decompress((data_dir() / "mini_newsgroup").read_bytes()))
    names = {0: "atheism", 1: "space"}
    if list(bunch["target_names"]) != ["alt.atheism", "sci.space"]:
        raise ValueError(f"unexpected newsgroups: {bunch['target_names']}")
    texts = [_strip_headers(t) if strip_headers else t for t in bunch["data"]]
    return LabelledTexts(texts=texts, labels=[names[int(t)] for t in bunch["target"]])


def polarity() -> LabelledTexts:
    texts, labels = [], []
    for line in (data_dir() / "pang_lee_polarity.cor").read_text(encoding="cp1252", errors="replace").splitlines():
        if not line.strip():
            continue
        tag, _, text = line.partition(" ")
        labels.append({"__label__neg": "negative", "__label__pos": "positive"}[tag])
        texts.append(text.strip())
    return LabelledTexts(texts=texts, labels=labels)

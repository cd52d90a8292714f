"""Few-shot classifiers trained on encoder embeddings, persisted as JSON + .npy (never pickle).

The head
    score(text) = softmax( log p_LR  +  log softmax(cos(x, prototype) / T)
                                     +  log softmax(w * cos(x, label) / T) )
    - p_LR: scikit-learn logistic regression (C = 1) on the normalised embeddings;
    - prototype: the normalised mean embedding of each label's examples (nearest centroid);
    - label: the embedding of the label's description (or its name) -- a zero-shot prior,
      weighted by ``prior_weight`` (0 turns it off: use that for opaque names like "0"/"1").
    T = 0.05.  With few examples per label the prototypes and the prior carry the decision; with
    many, the regression dominates.  On 16 examples per class of Pang-Lee polarity (minilm int8,
    10 draws) plain logistic regression reaches 0.66, this head 0.69 (bench/reports/classify.md).

On disk, under ``<DATA_DIR>/classifiers/<name>/``:
    classifier.json          metadata, metrics, the current version and the sha256 of each array
    v-<version>/*.npy        coef, intercept, prototypes, label_vectors
    v-<version>/encoder/     only for a fine-tuned classifier ("finetune": true): its own ONNX
                             encoder (model.<precision>.onnx, tokenizer.json, meta.json), the
                             sha256 of each file recorded in classifier.json under "encoder"
``classifier.json`` is replaced atomically (tmp + fsync + rename) *after* the new version's
arrays (and encoder files) are durable, so a crash leaves either the old or the new classifier,
never a mixture; superseded versions (with their encoder) are removed after the swap, unreferenced
leftovers at start-up.  Names match ``^[A-Za-z0-9_-]{1,64}$`` and are
validated before they touch the file system.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_fscore_support
from sklearn.model_selection import StratifiedKFold

from index.snapshot import fsync_dir
from models.sources import sha256_file

from ..errors import ApiError

log = logging.getLogger("semsearch.classifiers")

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
META_FILE = "classifier.json"
FORMAT = 1
HEAD_TEMPERATURE = 0.05
ARRAYS = ("coef", "intercept", "prototypes", "label_vectors")
ENCODER_DIR = "encoder"
MAX_LOADED_ENCODERS = 4      # fine-tuned ONNX sessions kept open (least recently used dropped)


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ApiError(400, "invalid_name", f"invalid classifier name {str(name)[:80]!r}: use "
                       "1-64 letters, digits, '-' or '_'", {"name": str(name)[:80]})
    return name


def _lsm(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@dataclass
class Head:
    labels: list[str]
    coef: np.ndarray            # [1, d] (two labels) or [C, d]
    intercept: np.ndarray       # [1] or [C]
    prototypes: np.ndarray      # [C, d] unit vectors
    label_vectors: np.ndarray   # [C, d] unit vectors
    prior_weight: float = 1.0
    temperature: float = HEAD_TEMPERATURE

    def log_scores(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.coef.T + self.intercept
        lr = _lsm(np.hstack([np.zeros_like(z), z])) if self.coef.shape[0] == 1 else _lsm(z)
        out = lr + _lsm(x @ self.prototypes.T / self.temperature)
        if self.prior_weight:
            out = out + _lsm(self.prior_weight * (x @ self.label_vectors.T) / self.temperature)
        return out

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        e = np.exp(_lsm(self.log_scores(np.asarray(x, dtype=np.float64))))
        return e / e.sum(axis=1, keepdims=True)


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def train_head(x: np.ndarray, y: np.ndarray, labels: list[str], label_vectors: np.ndarray,
               prior_weight: float, seed: int = 0) -> Head:
    """``y`` holds label indices 0..C-1; every label has at least one example."""
    x = _unit(np.asarray(x, dtype=np.float64))
    lr = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(x, y)
    protos = _unit(np.stack([x[y == c].mean(axis=0) for c in range(len(labels))]))
    return Head(labels=list(labels), coef=lr.coef_.astype(np.float64),
                intercept=lr.intercept_.astype(np.float64), prototypes=protos,
                label_vectors=_unit(np.asarray(label_vectors, dtype=np.float64)),
                prior_weight=float(prior_weight))


def cross_validate(x: np.ndarray, y: np.ndarray, labels: list[str], label_vectors: np.ndarray,
                   prior_weight: float, seed: int = 0) -> dict[str, Any]:
    """Stratified k-fold (k = min(5, smallest label count)) out-of-fold figures."""
    folds = int(min(5, np.bincount(y, minlength=len(labels)).min()))
    pred = np.empty(len(y), dtype=np.int64)
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        head = train_head(x[tr], y[tr], labels, label_vectors, prior_weight, seed)
        pred[te] = head.predict_proba(_unit(x[te])).argmax(axis=1)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(len(labels))),
                                                 zero_division=0)
    return {"folds": folds, "accuracy": round(float((pred == y).mean()), 6),
            "macro_f1": round(float(f.mean()), 6),
            "per_label": {lab: {"precision": round(float(p[i]), 6), "recall": round(float(r[i]), 6),
                                "f1": round(float(f[i]), 6), "support": int(s[i])}
                          for i, lab in enumerate(labels)}}


# ---------------------------------------------------------------------------- storage
def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(directory)


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


class ClassifierStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "classifiers"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._loaded: dict[str, tuple[str, Head]] = {}   # name -> (version, head)
        self._encoders: OrderedDict[tuple[str, str], Any] = OrderedDict()  # (name, version) -> encoder
        self._cleanup()

    def _dir(self, name: str) -> Path:
        path = self.root / validate_name(name)
        if path.parent != self.root:  # defence in depth: the pattern already forbids this
            raise ApiError(400, "invalid_name", "invalid classifier name")
        return path

    def _cleanup(self) -> None:
        """Remove what a crash may have left: trash, half-written versions, orphan dirs."""
        for entry in self.root.iterdir():
            if entry.name.startswith("."):
                shutil.rmtree(entry, ignore_errors=True)
                continue
            if not entry.is_dir() or not NAME.fullmatch(entry.name):
                continue
            meta = self._read_meta_file(entry)
            if meta is None:
                shutil.rmtree(entry, ignore_errors=True)
                continue
            keep = f"v-{meta['version']}"
            for sub in entry.iterdir():
                if sub.is_dir() and sub.name != keep:
                    shutil.rmtree(sub, ignore_errors=True)
                elif sub.is_file() and sub.name != META_FILE:
                    sub.unlink(missing_ok=True)

    @staticmethod
    def _read_meta_file(directory: Path) -> dict[str, Any] | None:
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        ok = (isinstance(meta, dict) and meta.get("format") == FORMAT
              and isinstance(meta.get("version"), str) and re.fullmatch(r"[0-9a-f]{32}", meta["version"])
              and isinstance(meta.get("labels"), list) and isinstance(meta.get("head"), dict)
              and isinstance(meta.get("arrays"), dict))
        return meta if ok else None

    # -- writes --------------------------------------------------------------------------
    def save(self, name: str, meta: dict[str, Any], head: Head,
             encoder_dir: Path | None = None) -> dict[str, Any]:
        """Persist atomically; returns the stored metadata (with version and created flag).

        ``encoder_dir``: a fine-tuned encoder folder (same file system) moved into the new
        version as ``encoder/``; ``meta["encoder"]["files"]`` must carry its files' sha256."""
        directory = self._dir(name)
        version = uuid.uuid4().hex
        arrays = {"coef": head.coef, "intercept": head.intercept,
                  "prototypes": head.prototypes, "label_vectors": head.label_vectors}
        blobs = {k: _npy_bytes(v) for k, v in arrays.items()}
        record = dict(meta, format=FORMAT, name=name, version=version,
                      created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      head=dict(meta.get("head", {}), temperature=head.temperature,
                                prior_weight=head.prior_weight),
                      arrays={k: hashlib.sha256(b).hexdigest() for k, b in blobs.items()})
        with self._lock:
            created = not (directory / META_FILE).exists()
            try:
                directory.mkdir(exist_ok=True)
                fsync_dir(self.root)
                staging = directory / f".tmp-{version}"
                staging.mkdir()
                for k, b in blobs.items():
                    _write_file(staging / f"{k}.npy", b)
                if encoder_dir is not None:
                    os.rename(encoder_dir, staging / ENCODER_DIR)
                    _fsync_tree(staging / ENCODER_DIR)
                fsync_dir(staging)
                os.rename(staging, directory / f"v-{version}")
                tmp = directory / f".{META_FILE}.tmp"
                _write_file(tmp, json.dumps(record, indent=2, sort_keys=True).encode("utf-8"))
                os.replace(tmp, directory / META_FILE)   # the commit point
                fsync_dir(directory)
            except OSError as exc:
                shutil.rmtree(directory / f".tmp-{version}", ignore_errors=True)
                log.error("saving classifier %s failed: %s", name, exc)
                raise ApiError(507 if exc.errno == 28 else 503, "storage_error",
                               f"could not save classifier {name!r}: {exc.strerror or exc}") from exc
            for sub in directory.iterdir():  # previous versions
                if sub.is_dir() and sub.name != f"v-{version}":
                    shutil.rmtree(sub, ignore_errors=True)
            self._loaded[name] = (version, head)
            self._drop_encoders(name)
        return dict(record, created=created)

    def delete(self, name: str) -> None:
        directory = self._dir(name)
        with self._lock:
            if not (directory / META_FILE).exists():
                raise self._not_found(name)
            trash = self.root / f".trash-{uuid.uuid4().hex}"
            try:
                os.rename(directory, trash)
                fsync_dir(self.root)
            except OSError as exc:
                raise ApiError(503, "storage_error", f"could not delete classifier {name!r}: "
                               f"{exc.strerror or exc}") from exc
            self._loaded.pop(name, None)
            self._drop_encoders(name)
        shutil.rmtree(trash, ignore_errors=True)

    def _drop_encoders(self, name: str) -> None:
        for key in [k for k in self._encoders if k[0] == name]:
            del self._encoders[key]

    # -- reads ---------------------------------------------------------------------------
    @staticmethod
    def _not_found(name: str) -> ApiError:
        return ApiError(404, "classifier_not_found", f"classifier {name!r} does not exist",
                        {"name": name})

    def meta(self, name: str) -> dict[str, Any]:
        meta = self._read_meta_file(self._dir(name))
        if meta is None:
            raise self._not_found(name)
        return meta

    def list(self) -> list[dict[str, Any]]:
        out = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and NAME.fullmatch(entry.name):
                meta = self._read_meta_file(entry)
                if meta is not None:
                    out.append(meta)
        return out

    def load(self, name: str) -> tuple[dict[str, Any], Head]:
        meta = self.meta(name)
        cached = self._loaded.get(name)
        if cached is not None and cached[0] == meta["version"]:
            return meta, cached[1]
        directory = self._dir(name) / f"v-{meta['version']}"
        arrays: dict[str, np.ndarray] = {}
        try:
            for k in ARRAYS:
                blob = (directory / f"{k}.npy").read_bytes()
                if hashlib.sha256(blob).hexdigest() != meta["arrays"][k]:
                    raise ValueError(f"{k}.npy does not match its checksum")
                arrays[k] = np.load(io.BytesIO(blob), allow_pickle=False)
        except (OSError, ValueError, KeyError) as exc:
            raise ApiError(503, "classifier_corrupt", f"classifier {name!r} cannot be read "
                           f"({exc}); train it again", {"name": name}) from exc
        head = Head(labels=list(meta["labels"]), prior_weight=float(meta["head"]["prior_weight"]),
                    temperature=float(meta["head"]["temperature"]), **arrays)
        with self._lock:
            self._loaded[name] = (meta["version"], head)
        return meta, head


    def encoder(self, name: str, meta: dict[str, Any], factory: Callable[[Path], Any]) -> Any:
        """The fine-tuned encoder of ``meta``'s version (``factory(folder)`` builds it), loaded
        once per version after checking every file against classifier.json's sha256."""
        key = (name, meta["version"])
        with self._lock:
            if key in self._encoders:
                self._encoders.move_to_end(key)
                return self._encoders[key]
        folder = self._dir(name) / f"v-{meta['version']}" / ENCODER_DIR
        try:
            for entry in meta["encoder"]["files"].values():
                path = folder / entry["path"]
                if path.parent != folder:
                    raise ValueError(f"unsafe encoder path {entry['path']!r}")
                if sha256_file(path) != entry["sha256"]:
                    raise ValueError(f"encoder/{entry['path']} does not match its checksum")
            enc = factory(folder)
        except FileNotFoundError as exc:
            if (self._dir(name) / META_FILE).exists() and self.meta(name)["version"] != meta["version"]:
                raise ApiError(409, "classifier_changed", f"classifier {name!r} was retrained "
                               "while predicting; retry", {"name": name}) from exc
            raise ApiError(503, "classifier_corrupt", f"classifier {name!r} cannot be read "
                           f"({exc}); train it again", {"name": name}) from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ApiError(503, "classifier_corrupt", f"classifier {name!r} cannot be read "
                           f"({exc}); train it again", {"name": name}) from exc
        except Exception as exc:  # onnxruntime refusing the model file
            raise ApiError(503, "classifier_corrupt", f"the fine-tuned encoder of classifier "
                           f"{name!r} cannot be loaded ({exc}); train it again", {"name": name}) from exc
        with self._lock:
            self._encoders[key] = enc
            while len(self._encoders) > MAX_LOADED_ENCODERS:
                self._encoders.popitem(last=False)
        return enc


_STORE_LOCK = threading.Lock()


def get_store(svc: Any) -> ClassifierStore:
    """The service's classifier store, opened (and cleaned up) on first use."""
    store = svc.extras.get("classifiers")
    if store is None:
        with _STORE_LOCK:
            store = svc.extras.get("classifiers")
            if store is None:
                store = svc.extras["classifiers"] = ClassifierStore(svc.settings.data_dir)
    return store

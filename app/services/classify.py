"""Zero-shot classification (texts against label names/descriptions) and kNN classification
against a labelled collection.

Zero-shot scores
    single-label  softmax(cos(text, label) / T) over the labels, T = ``DEFAULT_TEMPERATURE``.
                  T was fitted by minimising the pooled negative log-likelihood on the two real
                  data sets (20-Newsgroups atheism/space, Pang-Lee polarity) with minilm int8:
                  the per-set optima are 0.027 and 0.048, the pooled one 0.0365.  T never changes
                  which label wins, only how confident the scores are.
    multi-label   sigmoid((cos - c) / s) per label, independently; ``labels`` lists every label
                  whose score reaches ``threshold`` (default 0.5), best first.  c = 0.09 and
                  s = 0.06 were fitted (logistic regression on the cosine of right vs wrong label,
                  same pooled data), so 0.5 means "about as similar as a right label".
Label embeddings go through the embedding cache like any text, so a label set is encoded once.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ApiError

DEFAULT_TEMPERATURE = 0.035
MULTI_LABEL_CENTER = 0.09
MULTI_LABEL_SCALE = 0.06
MAX_LABELS = 256
MAX_LABEL_CHARS = 200
MAX_DESCRIPTION_CHARS = 2000


def parse_labels(labels: Any, field: str = "labels") -> tuple[list[str], list[str]]:
    """A label list or {label: description} -> (names, texts to embed)."""
    if isinstance(labels, Mapping):
        names = list(labels)
        texts = []
        for name in names:
            desc = labels[name]
            if not isinstance(desc, str) or not desc.strip() or "\x00" in desc:
                raise ApiError(422, "invalid_label", f"{field}[{name[:50]!r}]: the description "
                               "must be a non-empty string", {"label": name[:100]})
            if len(desc) > MAX_DESCRIPTION_CHARS:
                raise ApiError(422, "invalid_label", f"{field}[{name[:50]!r}]: descriptions are "
                               f"limited to {MAX_DESCRIPTION_CHARS} characters")
            texts.append(desc)
    elif isinstance(labels, Sequence) and not isinstance(labels, str):
        names = list(labels)
        texts = names
    else:
        raise ApiError(422, "invalid_labels", f"{field} must be a list of labels or an object "
                       "{label: description}")
    if len(names) < 2:
        raise ApiError(422, "too_few_labels", f"{field} needs at least 2 labels (got {len(names)})",
                       {"count": len(names)})
    if len(names) > MAX_LABELS:
        raise ApiError(422, "too_many_labels", f"{field} has {len(names)} labels; at most {MAX_LABELS}",
                       {"count": len(names), "limit": MAX_LABELS})
    for name in names:
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_LABEL_CHARS \
                or "\x00" in name:
            raise ApiError(422, "invalid_label", f"{field}: every label must be a non-empty string "
                           f"of at most {MAX_LABEL_CHARS} characters", {"label": str(name)[:100]})
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ApiError(422, "duplicate_label", f"{field}: label {dup[:50]!r} appears twice",
                       {"label": dup[:100]})
    return names, list(texts)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def zero_shot_results(sims: np.ndarray, names: list[str], multi_label: bool,
                      temperature: float, threshold: float) -> list[dict[str, Any]]:
    """Results in input order from a [texts, labels] cosine matrix."""
    out: list[dict[str, Any]] = []
    if multi_label:
        scores = 1.0 / (1.0 + np.exp(-(sims - MULTI_LABEL_CENTER) / MULTI_LABEL_SCALE))
        for row in scores:
            order = np.argsort(-row, kind="stable")
            out.append({"labels": [names[j] for j in order if row[j] >= threshold],
                        "scores": {names[j]: round(float(row[j]), 6) for j in order}})
        return out
    probs = softmax(sims / temperature)
    for row in probs:
        order = np.argsort(-row, kind="stable")
        out.append({"label": names[int(order[0])],
                    "scores": {names[j]: round(float(row[j]), 6) for j in order}})
    return out


async def zero_shot(svc: Any, texts: list[str], cut: list[bool], labels: Any, model: str | None,
                    multi_label: bool, temperature: float | None, threshold: float
                    ) -> list[dict[str, Any]]:
    names, label_texts = parse_labels(labels)
    # Labels in their own call: with int8 dynamic quantisation an embedding depends slightly on
    # the batch it was computed in; this way a label set is always encoded (and cached) alike.
    lab = (await svc.embedding.embed(model, label_texts)).vectors
    x = (await svc.embedding.embed(model, texts, cut)).vectors
    sims = np.clip(x @ lab.T, -1.0, 1.0)
    return zero_shot_results(sims, names, multi_label, temperature or DEFAULT_TEMPERATURE, threshold)


# ---------------------------------------------------------------------------- kNN
def _label_values(metadata: Mapping[str, Any] | None, path: list[str]) -> list[str]:
    value: Any = metadata
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return []
        value = value[part]
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, (bool, int, float)):
            out.append(json.dumps(v))
    return out


def knn_vote(hits: Sequence[Any], label_field: str, metric: str) -> dict[str, Any]:
    """Distance-weighted vote of the neighbours' labels: weight = cosine/dot score (floored at a
    tiny positive value), or 1 / distance for l2.  Scores are the normalised vote shares."""
    path = label_field.split(".")
    votes: dict[str, float] = {}
    used = 0
    for h in hits:
        values = _label_values(h.metadata, path)
        if not values:
            continue
        used += 1
        weight = 1.0 / (1e-6 - h.score) if metric == "l2" else max(float(h.score), 1e-6)
        for v in values:
            votes[v] = votes.get(v, 0.0) + weight / len(values)
    total = sum(votes.values())
    if not votes or total <= 0:
        return {"label": None, "scores": {}, "neighbors": used}
    ranked = sorted(votes.items(), key=lambda kv: -kv[1])  # stable: nearer labels win ties
    return {"label": ranked[0][0], "scores": {k: round(v / total, 6) for k, v in ranked},
            "neighbors": used}


# ---------------------------------------------------------------------------- trained classifiers
MAX_TRAIN_EXAMPLES = 20_000
SYNC_MAX_EXAMPLES = 300        # more examples than this train as a background job
EMBED_CHUNK = 1024


@dataclass
class TrainPlan:
    model: str
    texts: list[str]
    cut: list[bool]
    y: np.ndarray
    labels: list[str]
    label_texts: list[str]
    prior_weight: float
    seed: int
    finetune: Any = None       # finetune.FinetunePlan: SetFit-style fine-tuning first (a job)


def plan_training(svc: Any, req: Any) -> TrainPlan:
    """Validate a training request completely before anything is encoded or stored."""
    from . import finetune

    finetune.check_request(req)
    if not req.examples:
        raise ApiError(422, "empty_input", "examples must contain at least one example")
    texts, cut = svc.embedding.check_texts([e.text for e in req.examples], "examples[].text",
                                           limit=MAX_TRAIN_EXAMPLES)
    seen = list(dict.fromkeys(e.label for e in req.examples))
    if req.labels is not None:
        labels, label_texts = parse_labels(req.labels)
        unknown = [lab for lab in seen if lab not in labels]
        if unknown:
            raise ApiError(422, "unknown_label", f"example label {unknown[0][:50]!r} is not one of "
                           "the declared labels", {"label": unknown[0][:100]})
    else:
        labels, label_texts = parse_labels(seen, "examples[].label")
    index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([index[e.label] for e in req.examples], dtype=np.int64)
    counts = np.bincount(y, minlength=len(labels))
    for lab, n in zip(labels, counts):
        if n == 0:
            raise ApiError(422, "label_without_examples", f"label {lab[:50]!r} has no examples",
                           {"label": lab[:100]})
        if n < 2:
            raise ApiError(422, "too_few_examples", f"label {lab[:50]!r} has 1 example; every "
                           "label needs at least 2 (for cross-validation)",
                           {"label": lab[:100], "count": int(n)})
    ft = finetune.plan_finetune(svc, req, len(texts)) if req.finetune else None
    model = svc.embedding.encoder(req.model).name  # 404/503 for an unknown/unavailable model
    return TrainPlan(model, texts, cut, y, labels, label_texts, req.prior_weight, req.seed, ft)


async def train_classifier(svc: Any, name: str, plan: TrainPlan, ctx: Any = None) -> dict[str, Any]:
    """Encode, train, cross-validate in memory; then persist atomically (all or nothing)."""
    from .classifiers import cross_validate, get_store, train_head

    step = (lambda f: ctx.progress(f)) if ctx is not None else (lambda f: None)
    if plan.finetune is not None:
        return await _train_finetuned(svc, name, plan, step)
    x, lab = await _base_embeddings(svc, plan, step, 0.6)
    le = svc.embedding.encoder(plan.model)

    def fit() -> dict[str, Any]:
        cv = cross_validate(x, plan.y, plan.labels, lab, plan.prior_weight, plan.seed)
        step(0.85)
        head = train_head(x, plan.y, plan.labels, lab, plan.prior_weight, plan.seed)
        meta = _classifier_meta(plan, le.encoder.onnx_sha256, int(x.shape[1]), cv)
        return get_store(svc).save(name, meta, head)

    return describe(await asyncio.to_thread(fit))


def _classifier_meta(plan: TrainPlan, encoder_sha256: str, dim: int,
                     cv: dict[str, Any]) -> dict[str, Any]:
    """The classifier.json fields every classifier has (fine-tuned ones add encoder/finetune)."""
    counts = np.bincount(plan.y, minlength=len(plan.labels))
    return {"model": plan.model, "encoder_sha256": encoder_sha256, "dim": dim,
            "labels": plan.labels,
            "label_texts": dict(zip(plan.labels, plan.label_texts)),
            "examples": int(len(plan.y)),
            "examples_per_label": {lb: int(c) for lb, c in zip(plan.labels, counts)},
            "head": {"type": "logistic_regression+prototypes+label_prior", "C": 1.0,
                     "seed": plan.seed},
            "cross_validation": cv}


async def _base_embeddings(svc: Any, plan: TrainPlan, step: Any,
                           share: float) -> tuple[np.ndarray, np.ndarray]:
    """Examples and label texts through the base encoder (embedding cache, micro-batcher)."""
    chunks = []
    for s in range(0, len(plan.texts), EMBED_CHUNK):
        emb = await svc.embedding.embed(plan.model, plan.texts[s:s + EMBED_CHUNK],
                                        plan.cut[s:s + EMBED_CHUNK])
        chunks.append(emb.vectors)
        step(share * min(1.0, (s + EMBED_CHUNK) / len(plan.texts)))
    lab = (await svc.embedding.embed(plan.model, plan.label_texts)).vectors
    return np.vstack(chunks), lab


FINETUNE_CV_NOTE = ("cross_validation: the head on the base encoder's embeddings (the fine-tuned "
                    "encoder has seen every example, so out-of-fold figures on it would be "
                    "optimistic); train_accuracy: the served head + fine-tuned encoder on its own "
                    "training examples (not an estimate of accuracy on new texts)")


async def _train_finetuned(svc: Any, name: str, plan: TrainPlan, step: Any) -> dict[str, Any]:
    """SetFit-style: fine-tune the encoder in a child process, train the head on its embeddings.

    Honest figures: ``cross_validation`` is the head's out-of-fold score on the *base* encoder
    (the fine-tuned encoder saw every example); ``finetune.train_accuracy`` is measured on the
    training examples.  Nothing is stored unless every step succeeds."""
    import shutil
    import uuid

    from models.sources import sha256_file

    from . import finetune
    from .classifiers import ENCODER_DIR, cross_validate, get_store, train_head

    ft = plan.finetune
    store = get_store(svc)
    x_base, lab_base = await _base_embeddings(svc, plan, step, 0.08)
    base_sha = svc.embedding.encoder(plan.model).encoder.onnx_sha256
    work = store.root / f".finetune-{uuid.uuid4().hex}"     # dot: removed at start-up if orphaned
    try:
        labels = [plan.labels[int(i)] for i in plan.y]
        folder, enc_meta = await finetune.finetune_encoder(svc, ft, plan.texts, labels, plan.seed,
                                                           work, step, lo=0.1, hi=0.8)
        enc = await asyncio.to_thread(finetune.load_encoder, svc, plan.model, folder, ft.precision)
        x = (await asyncio.to_thread(enc.encode, plan.texts)).vectors
        step(0.88)
        lab = (await asyncio.to_thread(enc.encode, plan.label_texts)).vectors   # own call, as predict
        setfit = enc_meta["setfit"]
        files = {"model": enc_meta["files"][ft.precision], "tokenizer": enc_meta["files"]["tokenizer"],
                 "meta": {"path": "meta.json", "sha256": sha256_file(folder / "meta.json")}}

        def fit() -> dict[str, Any]:
            cv = cross_validate(x_base, plan.y, plan.labels, lab_base, plan.prior_weight, plan.seed)
            step(0.93)
            head = train_head(x, plan.y, plan.labels, lab, plan.prior_weight, plan.seed)
            train_acc = float((head.predict_proba(x).argmax(axis=1) == plan.y).mean())
            meta = _classifier_meta(plan, enc.onnx_sha256, int(x.shape[1]), dict(cv, encoder="base"))
            meta |= {"encoder": {"type": "setfit", "path": ENCODER_DIR, "base_model": plan.model,
                                "base_sha256": base_sha, "sha256": enc.onnx_sha256,
                                "precision": ft.precision, "dim": int(x.shape[1]), "files": files},
                    "finetune": {"options": ft.options(), "pairs": setfit["pairs"],
                                 "steps": setfit["steps"], "seed": plan.seed,
                                 "loss_first": setfit.get("loss_first"),
                                 "loss_last": setfit.get("loss_last"),
                                 "seconds": setfit.get("seconds"),
                                 "train_seconds": setfit.get("train_seconds"),
                                 "export_seconds": setfit.get("export_seconds"),
                                 "onnx_fidelity_min_cosine": setfit.get("fidelity_min_cosine"),
                                 "train_accuracy": round(train_acc, 6),
                                 "note": FINETUNE_CV_NOTE}}
            return store.save(name, meta, head, encoder_dir=folder)

        return describe(await asyncio.to_thread(fit))
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)


def describe(meta: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "model", "labels", "examples", "examples_per_label", "head",
            "cross_validation", "encoder", "finetune", "version", "created_at", "created")
    return {k: meta[k] for k in keys if k in meta}


async def predict(svc: Any, name: str, texts: list[str], cut: list[bool]) -> list[dict[str, Any]]:
    """Scores per text, in input order; results are cached per text under the classifier's
    version, so retraining invalidates them by construction."""
    from .classifiers import get_store

    store = get_store(svc)
    meta, head = await asyncio.to_thread(store.load, name)
    own = None                 # a fine-tuned classifier's own encoder (onnxruntime, per version)
    if meta.get("encoder"):
        from . import finetune
        own = await asyncio.to_thread(
            store.encoder, name, meta,
            lambda folder: finetune.load_encoder(svc, meta["model"], folder, meta["encoder"]["precision"]))
        dim = own.dim
    else:
        dim = svc.embedding.encoder(meta["model"]).encoder.dim
    if dim != head.coef.shape[1]:
        raise ApiError(409, "classifier_stale", f"classifier {name!r} was trained on "
                       f"{head.coef.shape[1]}-dimensional embeddings; model {meta['model']} now "
                       f"gives {dim}: train it again", {"name": name})
    cache = svc.cache
    keys = [cache.result_key("classifier", {"name": name, "text": t}, meta["version"])
            for t in texts] if cache is not None else []
    found = await cache.get_many(keys) if keys else {}
    probs: dict[int, np.ndarray] = {}
    for i, k in enumerate(keys):
        blob = found.get(k)
        if blob is not None:
            try:
                row = np.array(json.loads(blob), dtype=np.float64)
                if row.shape == (len(head.labels),):
                    probs[i] = row
            except ValueError:
                pass
    todo = [i for i in range(len(texts)) if i not in probs]
    if todo:
        if own is not None:
            vectors = (await asyncio.to_thread(own.encode, [texts[i] for i in todo])).vectors
        else:
            vectors = (await svc.embedding.embed(meta["model"], [texts[i] for i in todo],
                                                 [cut[i] for i in todo])).vectors
        p = head.predict_proba(vectors)
        fresh = {}
        for row, i in zip(p, todo):
            probs[i] = row
            if keys:
                fresh[keys[i]] = json.dumps([round(float(v), 6) for v in row]).encode()
        if fresh:
            await cache.set_many(fresh, ttl_s=svc.settings.cache_result_ttl_s)
    out = []
    for i in range(len(texts)):
        row = probs[i]
        order = np.argsort(-row, kind="stable")
        out.append({"label": head.labels[int(order[0])],
                    "scores": {head.labels[j]: round(float(row[j]), 6) for j in order}})
    return out

"""Build one domain encoder: corpus -> split -> (vocabulary) -> contrastive training ->
ONNX export -> fidelity check -> held-out evaluation (base vs adapted, fp32 + int8, Lee)
-> registered artifacts with all of it in meta.json.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..paths import model_cache_dir
from ..registry import BuiltEncoder, EncoderSpec, RegistryError, artifact_key, find_built, load_registry
from ..sources import file_lock
from .corpora import PACKAGES, TASKS, DomainCorpus, EvalSet, eval_set, load_corpus, training_pairs

# Defaults of the adaptation recipe; registry.toml's [encoders.X.adapt] overrides any of them.
DEFAULT_RECIPE: dict[str, Any] = {
    "seed": 42,
    "heldout_fraction": 0.2,
    "steps": 100,
    "batch_size": 32,
    "lr": 3e-5,
    "max_seq_length": 32,
    "pairs_per_concept": 6,
    "hard_fraction": 0.5,         # share of pairs batched with related concepts (hard negatives)
    "max_pairs": 20000,
    "vocab": False,
    "vocab_max_tokens": 500,
    "vocab_min_freq": 5,
    "lee_guard": 0.02,            # max Lee Pearson drop before weights are pulled back to the base
    "eval_per_concept": 3,
    "eval_max_queries": 1500,
}
FIDELITY_MIN_COSINE = 0.9999


def _log(msg: str) -> None:
    print(f"[adapt] {msg}", file=sys.stderr, flush=True)


def recipe_for(spec: EncoderSpec, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    recipe = dict(DEFAULT_RECIPE)
    recipe.update(spec.adapt)
    recipe.update(overrides or {})
    unknown = set(recipe) - set(DEFAULT_RECIPE)
    if unknown:
        raise RegistryError(f"{spec.name}: unknown adapt settings {sorted(unknown)}")
    return recipe


def domain_spec(domain: str, specs: dict[str, EncoderSpec]) -> EncoderSpec:
    for spec in specs.values():
        if spec.source == "adapted" and spec.domain == domain:
            return spec
    raise RegistryError(f"no adapted encoder registered for domain {domain!r}")


# -- evaluation ---------------------------------------------------------------------------

def _encoder(built: BuiltEncoder, precision: str):  # type: ignore[no-untyped-def]
    from ..encoder import OnnxEncoder
    return OnnxEncoder(built, precision, intra_op_threads=2)


def score_encoder(built: BuiltEncoder, ev: EvalSet, precision: str) -> dict[str, float]:
    from ..evaluate import lee_pearson, retrieval_metrics

    enc = _encoder(built, precision)
    docs = enc.encode(ev.documents).vectors
    queries = enc.encode(ev.queries).vectors
    out = {k: round(v, 4) for k, v in retrieval_metrics(queries, docs, ev.relevant).items()}
    kinds = sorted(set(ev.kinds))
    if len(kinds) > 1:       # per query kind (e.g. layperson vs clinical synonyms)
        for kind in kinds:
            idx = [i for i, k in enumerate(ev.kinds) if k == kind]
            m = retrieval_metrics(queries[idx], docs, [ev.relevant[i] for i in idx])
            out[f"{kind}_recall@10"] = round(m["recall@10"], 4)
    out["lee_pearson"] = round(lee_pearson(lambda t: enc.encode(t).vectors), 4)
    return out


def eval_fingerprint(ev: EvalSet) -> str:
    h = hashlib.sha256()
    for part in (ev.queries, ev.documents, [str(r) for r in ev.relevant]):
        h.update("\x1f".join(part).encode())
    return h.hexdigest()[:16]


def score_base(base: BuiltEncoder, ev: EvalSet, domain: str, progress: Callable[[str], None]) -> dict[str, Any]:
    """Base-encoder figures, cached by (base artifact key, evaluation set) so rebuilds are cheap."""
    cache = model_cache_dir() / "adapt" / "base-eval" / f"{domain}-{base.directory.name}-{eval_fingerprint(ev)}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    out = {}
    for precision in ("fp32", "int8"):
        progress(f"{domain}: scoring base {base.spec.name} {precision} "
                 f"({len(ev.queries)} queries x {len(ev.documents)} documents)")
        out[precision] = score_encoder(base, ev, precision)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(cache)
    return out


# -- the build -----------------------------------------------------------------------------

ALPHAS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


def interpolate_for_general_quality(model, initial: dict, base_lee: float, guard: float,  # type: ignore[no-untyped-def]
                                    progress: Callable[[str], None], domain: str) -> dict[str, Any]:
    """Guard general quality by weight-space interpolation (WiSE-FT, Wortsman et al. 2022).

    weights = initial + alpha * (trained - initial), with the largest alpha in ``ALPHAS`` whose
    Lee Pearson (general English) is within ``guard`` of the base encoder's.  Only the general
    benchmark is looked at, never the domain's held-out data.  alpha = 1 keeps the fine-tuned
    model unchanged; if no alpha passes, the smallest is kept and the shortfall is recorded.
    """
    import torch

    from ..evaluate import lee_pearson

    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tried = []
    chosen = ALPHAS[-1]
    for alpha in ALPHAS:
        if alpha < 1.0:
            with torch.no_grad():
                model.load_state_dict({k: initial[k] + alpha * (trained[k] - initial[k])
                                       if trained[k].is_floating_point() else trained[k] for k in trained})
        lee = lee_pearson(lambda t: model.encode(list(t), convert_to_numpy=True, normalize_embeddings=True,
                                                  batch_size=16))
        tried.append({"alpha": alpha, "lee_pearson": round(lee, 4)})
        progress(f"{domain}: alpha {alpha}: Lee {lee:.4f} (base {base_lee:.4f}, guard {guard})")
        if base_lee - lee <= guard:
            chosen = alpha
            break
    return {"alpha": chosen, "tried": tried, "guard": guard, "base_lee_pearson": base_lee,
            "method": "WiSE-FT weight interpolation towards the starting weights"}

@dataclass
class AdaptationRun:
    folder: Path                  # trained sentence-transformers folder
    scratch: BuiltEncoder         # ONNX export of it (for evaluation before registering)
    meta: dict[str, Any]          # everything that goes into meta.json


def split_and_sets(domain: str, recipe: dict[str, Any]) -> tuple[DomainCorpus, list, list, EvalSet, list]:
    corpus = load_corpus(domain)
    train, held = corpus.split(recipe["seed"], recipe["heldout_fraction"])
    ev = eval_set(corpus, held, recipe["seed"], recipe["eval_per_concept"], recipe["eval_max_queries"])
    pairs = training_pairs(train, recipe["seed"], recipe["max_pairs"], recipe["pairs_per_concept"])
    return corpus, train, held, ev, pairs


def run_adaptation(spec: EncoderSpec, specs: dict[str, EncoderSpec], recipe: dict[str, Any],
                   work: Path, progress: Callable[[str], None] = _log,
                   precisions: tuple[str, ...] = ("fp32", "int8")) -> AdaptationRun:
    """Train, export to a scratch folder, check fidelity and evaluate; register nothing.

    ``precisions``: which adapted variants to score (ablations score fp32 only).
    """
    from ..build import build as build_encoder, materialize_source
    from ..export import export_onnx, quantize_int8
    from ..registry import ONNX_OPSET
    from .train import load_sentence_transformer, seed_everything, train_contrastive
    from .vocab import extend_vocabulary, shattered_words

    t_start = time.time()
    cpu_start = time.process_time()
    domain = spec.domain
    base_spec = specs[str(spec.base)]
    if base_spec.source not in ("package-folder", "split-zip", "local"):
        raise RegistryError(f"{spec.name}: base {base_spec.name!r} must be a shipped or local encoder")
    build_encoder(base_spec.name)                      # no-op when cached
    base_built = find_built(base_spec, specs)
    assert base_built is not None
    base_folder = materialize_source(base_spec)

    corpus, train, held, ev, pairs = split_and_sets(domain, recipe)
    progress(f"{domain}: {len(corpus.concepts)} concepts ({len(train)} train / {len(held)} held out), "
             f"{len(pairs)} training pairs, {len(ev.queries)} evaluation queries over "
             f"{len(ev.documents)} documents")
    seed_everything(recipe["seed"])
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    start_folder = base_folder
    vocab_report: dict[str, Any] = {"used": False, "added_tokens": 0}
    if recipe["vocab"]:
        texts = [c.doc for c in train] + [q for c in train for q, _ in c.queries] + \
                [a for c in train for a, _, _ in c.pairs] + [t for c in train for t in c.context]
        words = shattered_words(base_folder / "tokenizer.json", texts, min_pieces=3,
                                min_freq=recipe["vocab_min_freq"], max_words=recipe["vocab_max_tokens"])
        start_folder = work / "vocab"
        rep = extend_vocabulary(base_folder, start_folder, [w for w, _, _ in words])
        vocab_report = {"used": True, **rep}
        progress(f"{domain}: vocabulary +{rep['added_tokens']} tokens, e.g. "
                 + ", ".join(f"{w}={'/'.join(p)}" for w, p in list(rep["examples"].items())[:4]))  # type: ignore[union-attr]

    base_scores = score_base(base_built, ev, domain, progress)    # cached after the first build
    model = load_sentence_transformer(start_folder, recipe["max_seq_length"])
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = train_contrastive(model, pairs, steps=recipe["steps"], batch_size=recipe["batch_size"],
                               lr=recipe["lr"], seed=recipe["seed"], progress=progress,
                               hard_fraction=recipe["hard_fraction"],
                               label=f"{domain}: ")
    model.max_seq_length = spec.max_length
    merge = interpolate_for_general_quality(model, initial, base_scores["fp32"]["lee_pearson"],
                                            recipe["lee_guard"], progress, domain)
    del initial
    trained = work / "st"
    model.save(str(trained))

    progress(f"{domain}: exporting scratch ONNX for evaluation")
    scratch_dir = work / "onnx"
    facts = export_onnx(trained, scratch_dir, spec.pooling, spec.normalize, spec.max_length, ONNX_OPSET)
    quantize_int8(scratch_dir / "model.fp32.onnx", scratch_dir / "model.int8.onnx")
    scratch = BuiltEncoder(spec=spec, directory=scratch_dir, meta={
        "dim": facts["dim"], "max_length": facts["max_length"], "pad_token_id": facts["pad_token_id"],
        "inputs": facts["inputs"],
        "files": {p: {"path": f"model.{p}.onnx", "sha256": ""} for p in ("fp32", "int8")}})

    # Fidelity: the ONNX graph + tokenizer.json must reproduce the trained model.
    sample = ev.queries[:48] + [ev.documents[i] for i in ev.relevant[:48]]
    ref = model.encode(sample, convert_to_numpy=True, normalize_embeddings=True, batch_size=32)
    got = _encoder(scratch, "fp32").encode(sample).vectors
    fidelity = float((ref * got).sum(1).min())
    progress(f"{domain}: ONNX fp32 vs trained model min cosine {fidelity:.6f}")
    if fidelity < FIDELITY_MIN_COSINE:
        raise RegistryError(f"{spec.name}: ONNX export drifted from the trained model (cosine {fidelity:.6f})")
    del model

    t_eval = time.time()
    adapted_scores = {}
    for precision in precisions:
        progress(f"{domain}: scoring adapted {precision}")
        adapted_scores[precision] = score_encoder(scratch, ev, precision)
    eval_seconds = time.time() - t_eval
    fp32_gain = adapted_scores["fp32"]["recall@10"] - base_scores["fp32"]["recall@10"]
    lee_drop = base_scores["fp32"]["lee_pearson"] - adapted_scores["fp32"]["lee_pearson"]
    progress(f"{domain}: held-out recall@10 base {base_scores['fp32']['recall@10']:.4f} -> adapted "
             f"{adapted_scores['fp32']['recall@10']:.4f} (fp32); Lee {base_scores['fp32']['lee_pearson']:.4f} "
             f"-> {adapted_scores['fp32']['lee_pearson']:.4f}")
    methods = ["contrastive-mnrl"] + (["vocabulary"] if vocab_report["used"] else []) + \
        ([f"weight-interpolation(alpha={merge['alpha']})"] if merge["alpha"] < 1 else [])
    kinds: dict[str, int] = {}
    for p in pairs:
        kinds[p[2]] = kinds.get(p[2], 0) + 1
    meta = {
        "adaptation": {
            "domain": domain,
            "base": base_spec.name,
            "base_key": base_built.directory.name,
            "corpus_packages": [corpus.package],
            "methods": methods,
            "recipe": recipe,
            "steps": result.steps,
            "pairs": len(pairs),
            "pairs_by_kind": kinds,
            "pairs_seen": result.pairs_seen,
            "loss_first": result.first_loss,
            "loss_last": result.last_loss,
            "seed": recipe["seed"],
            "training_seconds": result.seconds,
            "training_cpu_seconds": result.cpu_seconds,
            "vocabulary": vocab_report,
            "added_tokens": int(vocab_report["added_tokens"]),
            "onnx_fidelity_min_cosine": round(fidelity, 6),
            "weight_interpolation": merge,
        },
        "evaluation": {
            "task": TASKS[domain],
            "split": {"by": "concept", "seed": recipe["seed"], "heldout_fraction": recipe["heldout_fraction"],
                      "train_concepts": len(train), "heldout_concepts": len(held)},
            "queries": len(ev.queries),
            "corpus_size": len(ev.documents),
            "base": {"name": base_spec.name, **base_scores},
            "adapted": adapted_scores,
            "recall@10_gain_fp32": round(fp32_gain, 4),
            "lee_pearson_drop_fp32": round(lee_drop, 4),
            "meets_requirement": bool(fp32_gain > 0 and lee_drop < 0.03 and all(
                adapted_scores[p]["recall@10"] > base_scores[p]["recall@10"] for p in precisions)),
            "eval_seconds": round(eval_seconds, 1),
        },
    }
    meta["adaptation"]["total_seconds_before_register"] = round(time.time() - t_start, 1)
    # CPU seconds of this process (all threads): comparable across loaded / idle machines
    meta["adaptation"]["cpu_seconds_before_register"] = round(time.process_time() - cpu_start, 1)
    return AdaptationRun(folder=trained, scratch=scratch, meta=meta)


def adapt_domain(domain: str, force: bool = False, progress: Callable[[str], None] = _log,
                 router: bool = True) -> Path:
    """Build (or reuse) the adapted encoder of ``domain``; return its artifact directory.

    Also makes sure the domain router (model="auto") is built: it is cheap and cached, and
    a domain encoder without the router would leave "auto" unavailable.
    """
    directory = _adapt_domain(domain, force, progress)
    if router:
        from .router import build_router
        build_router(progress=progress)
    return directory


def _adapt_domain(domain: str, force: bool, progress: Callable[[str], None]) -> Path:
    from ..build import build_from_folder

    if domain not in PACKAGES:
        raise RegistryError(f"unknown domain {domain!r}; known: {', '.join(PACKAGES)}")
    specs = load_registry()
    spec = domain_spec(domain, specs)
    with file_lock(model_cache_dir() / "encoders" / f".{spec.name}.lock"):
        built = find_built(spec, specs)
        if built and not force:
            progress(f"{spec.name}: up to date ({built.directory})")
            return built.directory
        t0 = time.time()
        c0 = time.process_time()
        key = artifact_key(spec, specs)
        progress(f"{spec.name}: adapting {spec.base} to {domain} (key {key})")
        recipe = recipe_for(spec)
        work = model_cache_dir() / "adapt" / "work" / f"{spec.name}-{key}"
        try:
            run = run_adaptation(spec, specs, recipe, work, progress)
            run.meta["adaptation"]["build_seconds_total"] = None   # filled below
            final = build_from_folder(spec, run.folder, extra_meta=run.meta, specs=specs, progress=progress)
            # The registered export must be the one that was evaluated.
            fp32_same = _sha(final / "model.fp32.onnx") == _sha(run.scratch.directory / "model.fp32.onnx")
            meta_path = final / "meta.json"
            meta = json.loads(meta_path.read_text())
            meta["adaptation"]["build_seconds_total"] = round(time.time() - t0, 1)
            meta["adaptation"]["build_cpu_seconds_total"] = round(time.process_time() - c0, 1)
            meta["adaptation"]["registered_equals_evaluated"] = fp32_same
            tmp = meta_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
            tmp.replace(meta_path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        progress(f"{spec.name}: done in {time.time() - t0:.0f}s")
        return final


def _sha(path: Path) -> str:
    from ..sources import sha256_file
    return sha256_file(path)


def heldout_sample(domain: str, n: int, seed: int | None = None) -> EvalSet:
    """A small deterministic sample of the held-out evaluation set (for quick live checks)."""
    specs = load_registry()
    recipe = recipe_for(domain_spec(domain, specs))
    _, _, _, ev, _ = split_and_sets(domain, recipe)
    rng = np.random.default_rng(recipe["seed"] if seed is None else seed)
    idx = sorted(rng.choice(len(ev.queries), size=min(n, len(ev.queries)), replace=False).tolist())
    return EvalSet(queries=[ev.queries[i] for i in idx], kinds=[ev.kinds[i] for i in idx],
                   relevant=[ev.relevant[i] for i in idx], documents=ev.documents,
                   heldout_concepts=ev.heldout_concepts)

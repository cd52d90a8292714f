"""Domain encoders vs base minilm on held-out concepts; writes bench/reports/domain_eval.md.

    python bench/bench_domain_eval.py                 # build (no-op when cached) + report
    python bench/bench_domain_eval.py --ablate-vocab  # also train the other vocabulary variant
                                                      # (-> bench/reports/domain_vocab_ablation.json)

The figures are the ones the build measured and stored in each encoder's meta.json (held-out
concepts only, whole domain corpus as search space, fp32 and int8 ONNX, Lee Pearson), so the
report and `GET /v1/models` always agree.  ``--ablate-vocab`` trains each domain once more with
vocabulary adaptation switched the other way (not registered) and reports both; without it the
last saved ablation is shown.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models.adapt  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch loads)
from models.adapt.corpora import DOMAINS, TASKS  # noqa: E402
from models.paths import model_cache_dir  # noqa: E402
from models.registry import find_built, load_registry  # noqa: E402

REPORT = Path(__file__).resolve().parent / "reports" / "domain_eval.md"


def _row(label: str, m: dict[str, Any]) -> str:
    return (f"| {label} | {m['recall@1']:.4f} | {m['recall@10']:.4f} | {m['mrr']:.4f} | "
            f"{m['lee_pearson']:.4f} |")


def ablate(domain: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Train the other vocabulary variant (same recipe otherwise, not registered), fp32 only."""
    import shutil

    from models.adapt.pipeline import domain_spec, recipe_for, run_adaptation

    specs = load_registry()
    spec = domain_spec(domain, specs)
    vocab = not bool(spec.adapt.get("vocab"))
    work = model_cache_dir() / "adapt" / "work" / f"ablate-{domain}-{int(vocab)}"
    try:
        run = run_adaptation(spec, specs, recipe_for(spec, {"vocab": vocab}), work, precisions=("fp32",))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    other = {"label": f"vocab={vocab} (ablation)", "added_tokens": run.meta["adaptation"]["added_tokens"],
             "alpha": run.meta["adaptation"]["weight_interpolation"]["alpha"],
             "fp32": run.meta["evaluation"]["adapted"]["fp32"]}
    registered = {"label": f"vocab={not vocab} (registered)", "added_tokens": meta["adaptation"]["added_tokens"],
                  "alpha": meta["adaptation"]["weight_interpolation"]["alpha"],
                  "fp32": meta["evaluation"]["adapted"]["fp32"]}
    return {"variants": [registered, other], "note": "same recipe and seed; fp32"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ablate-vocab", action="store_true")
    args = p.parse_args()
    from models.adapt.router import build_router
    from models.build import build

    t0 = time.time()
    for d in DOMAINS:
        build(d)
    router_dir = build_router()
    build_wall = time.time() - t0
    specs = load_registry()
    metas = {d: find_built(specs[d], specs).meta for d in DOMAINS}  # type: ignore[union-attr]

    ablation: dict[str, Any] = {}
    ablation_file = REPORT.with_name("domain_vocab_ablation.json")
    if args.ablate_vocab:
        ablation = {d: ablate(d, metas[d]) for d in DOMAINS}
        ablation_file.write_text(json.dumps(ablation, indent=2))
    elif ablation_file.exists():
        ablation = json.loads(ablation_file.read_text())

    out = ["# Domain-adapted encoders: held-out evaluation", "",
           "Produced by `python bench/bench_domain_eval.py` (after `python -m models build --all`, "
           "which builds and evaluates the encoders; the figures below are read from each build's "
           "`meta.json`, the same ones `GET /v1/models` shows).", "",
           f"Host: {platform.machine()}, Python {platform.python_version()}, 2 cores shared with other "
           "sessions (wall-clock timings depend on their load; CPU seconds are given too).", "",
           "Protocol: concepts are split 80/20 by a seeded hash **before** training; training pairs "
           "come from training concepts only; queries come from held-out concepts only; the search "
           "space is the whole domain corpus (all concepts, training ones included as distractors). "
           "recall@k = share of queries whose concept is in the top k; MRR over the full ranking. "
           "Lee = Pearson correlation with human similarity ratings on the Lee et al. (2005) 50 news "
           "documents (general-domain quality). Lee is also the guard of the build: when fine-tuning "
           "costs more than 0.02 Lee Pearson, the weights are interpolated back towards minilm "
           "(WiSE-FT; largest alpha in 1.0, 0.9, ..., 0.5 within the guard), so for an interpolated "
           "encoder Lee is not an independent test; the domain held-out data is never used for this choice.", ""]
    summary = ["| domain | queries | corpus | recall@10 base fp32 | recall@10 adapted fp32 | "
               "recall@10 adapted int8 | Lee drop (fp32) | vocab tokens | build s |",
               "|---|---|---|---|---|---|---|---|---|"]
    for d in DOMAINS:
        ev, ad = metas[d]["evaluation"], metas[d]["adaptation"]
        summary.append(f"| {d} | {ev['queries']} | {ev['corpus_size']} | {ev['base']['fp32']['recall@10']:.4f} | "
                       f"{ev['adapted']['fp32']['recall@10']:.4f} | {ev['adapted']['int8']['recall@10']:.4f} | "
                       f"{ev['lee_pearson_drop_fp32']:+.4f} | {ad['added_tokens']} | {ad['build_seconds_total']} |")
    total = sum(metas[d]["adaptation"]["build_seconds_total"] for d in DOMAINS)
    cpu = sum(metas[d]["adaptation"].get("build_cpu_seconds_total", 0) for d in DOMAINS)
    evals = sum(metas[d]["evaluation"]["eval_seconds"] for d in DOMAINS)
    out += ["## Summary", ""] + summary + [""]
    out += [f"Build time, three domains: **{total:.0f} s wall** ({total / 60:.1f} min; {cpu:.0f} CPU-seconds) "
            "measured by `time python -m models adapt --domain all` (each encoder: corpus, training, "
            "Lee guard, scratch export + fidelity check, held-out scoring of fp32 and int8, final export). "
            "minilm's own held-out scores are cached per (minilm artifact key, evaluation set); on an "
            f"empty cache scoring it adds about as much as scoring the adapted encoders ({evals:.0f} s here). "
            "The domain router adds ~20 s.", ""]
    for d in DOMAINS:
        ev, ad = metas[d]["evaluation"], metas[d]["adaptation"]
        r = ad["recipe"]
        out += [f"## {d}", "",
                f"Task: {TASKS[d]}.", "",
                f"Corpus: `{', '.join(ad['corpus_packages'])}`; {ev['split']['train_concepts']} training / "
                f"{ev['split']['heldout_concepts']} held-out concepts (seed {ev['split']['seed']}); "
                f"{ev['queries']} held-out queries (at most {r['eval_per_concept']} per concept, "
                f"{r['eval_max_queries']} in all) against {ev['corpus_size']} documents.", "",
                "| encoder | recall@1 | recall@10 | MRR | Lee Pearson |", "|---|---|---|---|---|",
                _row("minilm (base) fp32", ev["base"]["fp32"]), _row("minilm (base) int8", ev["base"]["int8"]),
                _row(f"{d} (adapted) fp32", ev["adapted"]["fp32"]), _row(f"{d} (adapted) int8", ev["adapted"]["int8"]),
                ""]
        extra = sorted(k for k in ev["adapted"]["fp32"] if k.endswith("_recall@10"))
        if extra:
            out += ["recall@10 by query kind (fp32): " + "; ".join(
                f"{k.split('_recall')[0]} {ev['base']['fp32'][k]:.4f} -> {ev['adapted']['fp32'][k]:.4f}" for k in extra), ""]
        out += [f"Method: {', '.join(ad['methods'])}; {ad['steps']} steps x batch {r['batch_size']} "
                f"({ad['pairs_seen']} pairs seen of {ad['pairs']} mined: "
                + ", ".join(f"{k} {v}" for k, v in sorted(ad["pairs_by_kind"].items())) +
                f"), lr {r['lr']}, max_seq_length {r['max_seq_length']}, hard-negative batching "
                f"{r['hard_fraction']}, seed {ad['seed']}; loss {ad['loss_first']} -> {ad['loss_last']}; "
                f"vocabulary tokens added: {ad['added_tokens']}.", "",
                f"Time: training {ad['training_seconds']} s, evaluation {ev['eval_seconds']} s, "
                f"whole build {ad['build_seconds_total']} s. ONNX fp32 vs trained model: min cosine "
                f"{ad['onnx_fidelity_min_cosine']}. Requirement (recall@10 up, Lee drop < 0.03): "
                f"{'met' if ev['meets_requirement'] else 'NOT met'}.", ""]
        if d in ablation:
            ab = ablation[d]
            out += [f"Vocabulary ablation ({ab['note']}; from `{ablation_file.name}`):", "",
                    "| variant | tokens added | alpha | recall@1 | recall@10 | MRR | Lee Pearson |",
                    "|---|---|---|---|---|---|---|"]
            out += [f"| {v['label']} | {v['added_tokens']} | {v.get('alpha', '-')} | {v['fp32']['recall@1']:.4f} | "
                    f"{v['fp32']['recall@10']:.4f} | {v['fp32']['mrr']:.4f} | {v['fp32']['lee_pearson']:.4f} |"
                    for v in ab["variants"]]
            out += [""]
    rmeta = json.loads((router_dir / "router.json").read_text())
    out += ["## Domain router (model=\"auto\")", "",
            f"{rmeta['model']} on minilm {rmeta['precision']} embeddings; trained on {rmeta['train_texts']} "
            f"texts of training concepts + general English (Lee, 20 Newsgroups, Pang-Lee); held-out "
            f"accuracy **{rmeta['heldout_accuracy']:.4f}** on {rmeta['heldout_texts']} texts of held-out "
            f"concepts / held-out general documents; recall by domain: "
            + ", ".join(f"{k} {v:.4f}" for k, v in sorted(rmeta["heldout_recall_by_domain"].items())) + ".", "",
            f"(This run: builds/reuse took {build_wall:.0f} s.)", ""]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(out))
    print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

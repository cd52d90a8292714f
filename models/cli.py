"""``python -m models``: list, build, adapt, import and evaluate encoders."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .registry import RegistryError, build_command, find_built, load_registry


def _cmd_list(_: argparse.Namespace) -> int:
    specs = load_registry()
    for spec in specs.values():
        built = find_built(spec, specs)
        state = f"built {built.directory}" if built else f"not built ({build_command(spec.name)})"
        print(f"{spec.name:10s} {spec.domain:8s} dim={spec.dim:<4d} {state}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from .build import build

    specs = load_registry()
    names = args.names or [n for n, s in specs.items()
                           if args.all or s.source in ("package-folder", "split-zip")]
    for i, name in enumerate(names, 1):
        print(f"[build] ({i}/{len(names)}) {name}", file=sys.stderr, flush=True)
        build(name, force=args.force)
    if args.all:
        from .adapt.router import build_router
        build_router()
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    import time

    from .adapt import DOMAINS, adapt_domain
    from .adapt.router import build_router

    domains = list(DOMAINS) if args.domain == "all" else [args.domain]
    for domain in domains:
        t0 = time.time()
        directory = adapt_domain(domain, force=args.force, router=False)
        meta = json.loads((directory / "meta.json").read_text())
        ev = meta.get("evaluation", {})
        print(json.dumps({"domain": domain, "directory": str(directory),
                          "seconds_this_run": round(time.time() - t0, 1),
                          "build_seconds_total": meta.get("adaptation", {}).get("build_seconds_total"),
                          "recall@10": {"base_fp32": ev.get("base", {}).get("fp32", {}).get("recall@10"),
                                        "adapted_fp32": ev.get("adapted", {}).get("fp32", {}).get("recall@10"),
                                        "adapted_int8": ev.get("adapted", {}).get("int8", {}).get("recall@10")},
                          "meets_requirement": ev.get("meets_requirement")}))
    if not args.no_router:
        build_router()
    return 0


def _cmd_build_router(args: argparse.Namespace) -> int:
    from .adapt.router import build_router

    directory = build_router(force=args.force)
    print((directory / "router.json").read_text())
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from .adapt.importer import import_checkpoint

    spec = import_checkpoint(args.name, args.path, domain=args.domain, description=args.description,
                             pooling=args.pooling, normalize=False if args.no_normalize else None,
                             max_length=args.max_length, force=args.force)
    built = find_built(spec)
    print(json.dumps({"name": spec.name, "domain": spec.domain, "dim": spec.dim, "pooling": spec.pooling,
                      "normalize": spec.normalize, "max_length": spec.max_length,
                      "directory": str(built.directory) if built else None,
                      "fidelity_min_cosine": built.meta.get("import", {}).get("fidelity_min_cosine") if built else None},
                     indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .encoder import OnnxEncoder
    from .evaluate import lee_pearson, load_pairs, pairs_metrics

    specs = load_registry()
    if args.model not in specs:
        print(f"unknown encoder {args.model!r}; known: {', '.join(specs)}", file=sys.stderr)
        return 2
    built = find_built(specs[args.model], specs)
    if built is None:
        print(f"{args.model} is not built; run: {build_command(args.model)}", file=sys.stderr)
        return 2
    enc = OnnxEncoder(built, precision=args.precision)
    report: dict[str, object] = {"model": args.model, "precision": enc.precision}
    if args.pairs:
        queries, docs = load_pairs(Path(args.pairs))
        report.update(pairs_metrics(lambda t: enc.encode(t).vectors, queries, docs))
    elif args.domain:
        # Held-out retrieval on a domain corpus (any encoder; the split is the domain encoder's).
        from .adapt.pipeline import heldout_sample, score_encoder

        ev = heldout_sample(args.domain, args.sample or 10**9)
        report.update({"domain": args.domain, "corpus_size": len(ev.documents)})
        report.update(score_encoder(built, ev, enc.precision))
    else:
        report["lee_pearson"] = round(lee_pearson(lambda t: enc.encode(t).vectors), 4)
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="registered encoders and whether they are built")
    b = sub.add_parser("build", help="export encoders to ONNX (fp32 + int8) into MODEL_CACHE")
    b.add_argument("names", nargs="*", help="encoders to build (default: all general encoders)")
    b.add_argument("--all", action="store_true", help="also build domain-adapted encoders")
    b.add_argument("--force", action="store_true", help="rebuild even when the cache is current")
    e = sub.add_parser("evaluate", help="Lee benchmark, or recall@k/MRR on your own pairs")
    e.add_argument("--model", default="minilm")
    e.add_argument("--precision", choices=["int8", "fp32"], default=None)
    e.add_argument("--pairs", help="JSON lines with {\"query\": ..., \"document\": ...}")
    e.add_argument("--domain", choices=["medical", "legal", "finance"],
                   help="held-out retrieval on a domain corpus (queries of held-out concepts, whole corpus)")
    e.add_argument("--sample", type=int, default=0, help="with --domain: score only N held-out queries")
    a = sub.add_parser("adapt", help="build a domain-adapted encoder (needs torch; cached)")
    a.add_argument("--domain", required=True, choices=["medical", "legal", "finance", "all"])
    a.add_argument("--force", action="store_true", help="rebuild even when the cache is current")
    a.add_argument("--no-router", action="store_true", help="do not (re)build the domain router")
    r = sub.add_parser("build-router", help="train the auto-routing domain classifier on minilm embeddings")
    r.add_argument("--force", action="store_true")
    i = sub.add_parser("import", help="register a local BERT-family HF / sentence-transformers folder")
    i.add_argument("--name", required=True)
    i.add_argument("--path", required=True, help="model folder on disk")
    i.add_argument("--domain", default="general", help="domain tag shown in the model list")
    i.add_argument("--description", default=None)
    i.add_argument("--pooling", choices=["mean", "cls"], default=None,
                   help="default: the folder's sentence-transformers pooling, else mean")
    i.add_argument("--no-normalize", action="store_true", help="do not L2-normalise embeddings")
    i.add_argument("--max-length", type=int, default=None)
    i.add_argument("--force", action="store_true", help="re-export / replace an existing import")
    args = p.parse_args(argv)
    try:
        return {"list": _cmd_list, "build": _cmd_build, "evaluate": _cmd_evaluate, "adapt": _cmd_adapt,
                "build-router": _cmd_build_router, "import": _cmd_import}[args.cmd](args)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

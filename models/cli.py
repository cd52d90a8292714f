"""``python -m models``: list, build, evaluate encoders."""
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
    args = p.parse_args(argv)
    try:
        return {"list": _cmd_list, "build": _cmd_build, "evaluate": _cmd_evaluate}[args.cmd](args)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

"""The ``semsearch`` command line: serve, build-models, ingest, search, restore, bench.

Client commands (ingest, search) talk to a running service over HTTP: --url (default: the
SEMSEARCH_URL environment variable, else http://127.0.0.1:8000) and --api-key (default:
SEMSEARCH_API_KEY; sent as ``Authorization: Bearer KEY``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .middleware import configure_logging
    from .settings import get_settings

    s = get_settings()
    configure_logging(s.log_level, s.log_json)
    uvicorn.run("app.main:app_factory", factory=True, host=args.host or s.host, port=args.port or s.port,
                log_level=s.log_level, access_log=False, timeout_graceful_shutdown=30)
    return 0


def _build_models(args: argparse.Namespace) -> int:
    from models.cli import main as models_main

    return models_main(["build", *(["--all"] if args.all else []), *args.names])


def _client(args: argparse.Namespace, timeout_s: float = 120.0):  # -> httpx.Client
    import httpx

    headers = {"User-Agent": "semsearch-cli/0.1"}
    key = args.api_key or os.environ.get("SEMSEARCH_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    url = args.url or os.environ.get("SEMSEARCH_URL") or DEFAULT_URL
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)


def _ingest(args: argparse.Namespace) -> int:
    from .ingest import IngestError, ensure_collection, ingest_file

    path = Path(args.file)
    if not path.is_file():
        print(f"error: no such file: {path}", file=sys.stderr)
        return 2
    try:
        with _client(args) as client:
            if args.create:
                ensure_collection(client, args.collection, args.model, args.index, args.metric)
            report = ingest_file(path, args.collection, client, batch_size=args.batch_size,
                                 fmt=args.format, state_path=Path(args.state_file) if args.state_file else None,
                                 restart=args.restart, progress=not args.quiet, retries=args.retries)
    except IngestError as exc:
        print(f"error: {exc} (progress so far is saved; run the same command to resume)",
              file=sys.stderr)
        return 1
    print(json.dumps({"collection": args.collection, "accepted": report.accepted,
                      "rejected": len(report.rejected), "batches": report.batches,
                      "rejected_lines": [r.line for r in report.rejected][:1000]}))
    return 1 if report.rejected else 0


def _search(args: argparse.Namespace) -> int:
    from .ingest import error_reason

    body: dict[str, object] = {"query": args.query, "top_k": args.top_k}
    if args.filter:
        try:
            body["filter"] = json.loads(args.filter)
        except ValueError as exc:
            print(f"error: --filter is not valid JSON: {exc}", file=sys.stderr)
            return 2
    import httpx

    try:
        with _client(args, timeout_s=60.0) as client:
            resp = client.post(f"/v1/collections/{args.collection}/search", json=body)
    except httpx.HTTPError as exc:
        print(f"error: server unreachable: {exc}", file=sys.stderr)
        return 1
    if not resp.is_success:
        print(f"error: {error_reason(resp)}", file=sys.stderr)
        return 1
    data = resp.json()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    hits = data.get("results") or data.get("hits") or data.get("data") or []
    if hits and isinstance(hits[0], list):  # batched shape: one list per query
        hits = hits[0]
    for rank, hit in enumerate(hits, 1):
        text = " ".join(str(hit.get("text", "")).split())
        if len(text) > 100:
            text = text[:97] + "..."
        print(f"{rank:3d}. {float(hit.get('score', 0.0)):.4f}  {hit.get('id')}  {text}")
    if not hits:
        print("(no results)")
    return 0


def _restore(args: argparse.Namespace) -> int:
    """Offline restore of a snapshot archive (the server must not have the collection open)."""
    from index import IndexServiceError, validate_name
    from index.archive import restore_offline

    from .settings import get_settings

    data_dir = Path(args.data_dir) if args.data_dir else get_settings().data_dir
    archive = Path(args.archive)
    try:
        validate_name(args.collection)
        if not archive.is_file():
            print(f"error: no such archive: {archive}", file=sys.stderr)
            return 2
        result = restore_offline(archive, data_dir, args.collection)
    except IndexServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps({**result, "archive": str(archive), "data_dir": str(data_dir)}))
    return 0


def _bench(args: argparse.Namespace) -> int:
    if not (REPO_ROOT / "bench" / "run_all.py").exists():
        print("error: bench/run_all.py is not present in this installation "
              "(benchmarks run from a source checkout: make bench)", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", "bench.run_all", *args.bench_args], cwd=REPO_ROOT)


def _add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help=f"service URL (default: $SEMSEARCH_URL or {DEFAULT_URL})")
    p.add_argument("--api-key", help="API key (default: $SEMSEARCH_API_KEY)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="semsearch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="start the HTTP service (HOST/PORT settings)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    b = sub.add_parser("build-models", help="build encoders into the model cache")
    b.add_argument("names", nargs="*")
    b.add_argument("--all", action="store_true")

    i = sub.add_parser("ingest", help="load a JSONL or CSV file into a collection (batched, resumable)",
                       description="JSONL rows: {\"id\", \"text\", \"metadata\"} (other fields become "
                                   "metadata). CSV: header with 'text' (and optionally 'id'); other "
                                   "columns become metadata. Exit code 1 if any row was rejected.")
    i.add_argument("file")
    i.add_argument("--collection", required=True)
    _add_client_args(i)
    i.add_argument("--batch-size", type=int, default=64, help="documents per request (default 64)")
    i.add_argument("--format", choices=["auto", "jsonl", "csv"], default="auto",
                   help="default: from the file extension (.csv/.tsv = csv, else jsonl)")
    i.add_argument("--create", action="store_true", help="create the collection first (idempotent)")
    i.add_argument("--model", help="encoder for --create (default: the service's default)")
    i.add_argument("--index", default="flat", choices=["flat", "hnsw", "ivf"], help="index type for --create")
    i.add_argument("--metric", default="cosine", choices=["cosine", "dot", "l2"], help="metric for --create")
    i.add_argument("--state-file", help="resume state (default: FILE.<collection>.ingest-state.json)")
    i.add_argument("--restart", action="store_true", help="ignore saved progress and start from the top")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    i.add_argument("--retries", type=int, default=5,
                   help="retries (with backoff) of a batch on 429/5xx/connection errors (default 5)")

    q = sub.add_parser("search", help="semantic search in a collection")
    q.add_argument("query")
    q.add_argument("--collection", required=True)
    q.add_argument("--top-k", type=int, default=10)
    q.add_argument("--filter", help="metadata filter as JSON")
    q.add_argument("--json", action="store_true", help="print the raw JSON response")
    _add_client_args(q)

    r = sub.add_parser("restore", help="restore a collection from a snapshot archive (offline)",
                       description="Verify ARCHIVE (a DATA_DIR/snapshots/<name>/<timestamp>.tar file) "
                                   "against its checksums and put it in place of collection NAME "
                                   "(created if missing). Stop the server first, or use "
                                   "POST /v1/collections/NAME/restore instead.")
    r.add_argument("archive")
    r.add_argument("--collection", required=True)
    r.add_argument("--data-dir", help="default: the DATA_DIR setting")

    be = sub.add_parser("bench", help="run the benchmarks (python -m bench.run_all)")
    be.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed to bench.run_all")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"serve": _serve, "build-models": _build_models, "ingest": _ingest,
                "search": _search, "bench": _bench, "restore": _restore}
    return handlers[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())

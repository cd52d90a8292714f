"""The ``semsearch`` command line: serve, build-models, ingest, search, bench."""
from __future__ import annotations

import argparse
import sys


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="semsearch", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="start the HTTP service (HOST/PORT settings)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    b = sub.add_parser("build-models", help="build encoders into the model cache")
    b.add_argument("names", nargs="*")
    b.add_argument("--all", action="store_true")
    args = p.parse_args(argv)
    return {"serve": _serve, "build-models": _build_models}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())

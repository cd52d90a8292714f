"""Run every benchmark module in bench/ that defines a top-level ``main()`` (``make bench``).

    python -m bench.run_all                   # all of them, one after the other
    python -m bench.run_all --quick           # pass --quick to the ones that take arguments
    python -m bench.run_all --only bench_perf --list

Each module runs in its own interpreter (``python -c 'from bench.X import main; main(...)'``) so
thread settings, loaded models and memory of one benchmark never leak into the next, and one
failing benchmark does not stop the others.  Modules are found by parsing their source (no
import), so helpers without ``main()`` (loadgen, perf_env, perf_report) are skipped.  A
``main`` that takes a parameter receives the extra arguments as a list (``main(argv)``); a
``main()`` without parameters is called as is, with ``sys.argv`` set to the module name plus
the extra arguments and ``BENCH_QUICK=1`` in the environment for ``--quick``.
"""
from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

_RUNNER = """
import inspect, sys
from bench.{mod} import main
args = sys.argv[1:]
sys.argv = ["bench.{mod}", *args]
takes_args = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
                 for p in inspect.signature(main).parameters.values())
result = main(args) if takes_args else main()
sys.exit(result if isinstance(result, int) else 0)
"""


def accepts_quick(mod: str) -> bool:
    return '"--quick"' in (BENCH_DIR / f"{mod}.py").read_text(encoding="utf-8")


def discover() -> list[str]:
    """Modules of bench/ with a top-level ``def main``, in name order."""
    found = []
    for path in sorted(BENCH_DIR.glob("*.py")):
        if path.stem in ("__init__", "run_all"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError) as exc:
            print(f"[run_all] skipping {path.name}: {exc}", file=sys.stderr)
            continue
        if any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "main"
               for n in tree.body):
            found.append(path.stem)
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fast smoke variants (passed on as --quick)")
    ap.add_argument("--only", default="", help="comma-separated module names (e.g. bench_perf)")
    ap.add_argument("--skip", default="", help="comma-separated module names to leave out")
    ap.add_argument("--list", action="store_true", help="list the benchmark modules and exit")
    args, extra = ap.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    modules = discover()
    if args.only:
        wanted = [m.strip() for m in args.only.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in modules]
        if unknown:
            ap.error(f"unknown benchmark module(s): {', '.join(unknown)} (found: {', '.join(modules)})")
        modules = wanted
    skip = {m.strip() for m in args.skip.split(",") if m.strip()}
    modules = [m for m in modules if m not in skip]
    if args.list:
        print("\n".join(modules))
        return 0
    if extra and len(modules) != 1:
        ap.error(f"extra arguments {extra} need --only with one module")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if args.quick:
        env["BENCH_QUICK"] = "1"
    failed: list[str] = []
    for mod in modules:
        print(f"[run_all] === {mod} ===", flush=True)
        t0 = time.perf_counter()
        forwarded = (["--quick"] if args.quick and accepts_quick(mod) else []) + extra
        code = subprocess.call([sys.executable, "-c", _RUNNER.format(mod=mod), *forwarded],
                               cwd=REPO_ROOT, env=env)
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"[run_all] {mod}: {status} in {time.perf_counter() - t0:.0f}s", flush=True)
        if code != 0:
            failed.append(mod)
    if failed:
        print(f"[run_all] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"[run_all] all {len(modules)} benchmark(s) ok; reports in {BENCH_DIR / 'reports'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

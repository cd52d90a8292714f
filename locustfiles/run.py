"""Headless load test with a pass/fail verdict (`make load`).

    python -m locustfiles.run --users 20 --spawn-rate 5 --duration 60s --p99-ms 500
    python -m locustfiles.run --profile spike --users 40 --spawn-rate 10 --duration 90s
    python -m locustfiles.run --host http://127.0.0.1:8000 ...     # an already running service

Without --host it starts what it tests and always tears it down: a real redis-server on a free
port and `python -m app.cli serve` on another free port with a temporary DATA_DIR, and seeds the
collection before locust starts.  Locust writes CSV (`<profile>_stats.csv`, `_stats_history.csv`,
`_failures.csv`, `_exceptions.csv`), HTML (`<profile>.html`) and its log (`<profile>_locust.log`)
into --report-dir (default bench/reports/load/).  Prints RPS and p50/p95/p99 per endpoint and the
failure count; exits 1 on any failed request or when the
aggregated p99 exceeds --p99-ms (0 = no latency target), 2 if the run itself could not happen.
"""
from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

PROFILES = {"mix": REPO_ROOT / "locustfiles" / "mix.py", "spike": REPO_ROOT / "locustfiles" / "spike.py"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m locustfiles.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--spawn-rate", type=float, default=5.0)
    p.add_argument("--duration", default="60s", help="locust run time, e.g. 20s, 5m")
    p.add_argument("--p99-ms", type=float, default=0.0, help="aggregated p99 target in ms (0 = none)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="mix")
    p.add_argument("--host", help="test this running service instead of starting one")
    p.add_argument("--report-dir", default=str(REPO_ROOT / "bench" / "reports" / "load"))
    p.add_argument("--models", default="minilm", help="MODELS for the started server")
    p.add_argument("--seed-docs", type=int, default=None, help="documents indexed before the run")
    p.add_argument("--no-redis", action="store_true", help="start the server without Redis")
    return p.parse_args(argv)


def read_stats(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _f(row: dict[str, str], key: str) -> float:
    try:
        return float(row.get(key) or 0)
    except ValueError:
        return 0.0


def summarize(rows: list[dict[str, str]], out=sys.stdout) -> tuple[int, float]:
    """Print the per-endpoint table; return (failures, aggregated p99 ms)."""
    header = f"{'endpoint':58s} {'reqs':>7s} {'fails':>6s} {'rps':>7s} {'p50':>7s} {'p95':>7s} {'p99':>7s}"
    print(header, file=out)
    print("-" * len(header), file=out)
    failures, p99 = 0, 0.0
    for row in rows:
        name = row.get("Name", "")
        label = f"{row.get('Type', '')} {name}".strip() if name != "Aggregated" else "TOTAL"
        print(f"{label[:58]:58s} {int(_f(row, 'Request Count')):7d} {int(_f(row, 'Failure Count')):6d} "
              f"{_f(row, 'Requests/s'):7.1f} {_f(row, '50%'):7.0f} {_f(row, '95%'):7.0f} "
              f"{_f(row, '99%'):7.0f}", file=out)
        if name == "Aggregated":
            failures, p99 = int(_f(row, "Failure Count")), _f(row, "99%")
    print("(latencies in ms)", file=out)
    return failures, p99


def run_locust(args: argparse.Namespace, host: str, report_dir: Path) -> tuple[int, Path]:
    prefix = report_dir / args.profile
    cmd = [sys.executable, "-m", "locust", "-f", str(PROFILES[args.profile]), "--headless",
           "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.duration,
           "--host", host, "--csv", str(prefix), "--html", str(report_dir / f"{args.profile}.html"),
           "--only-summary", "--stop-timeout", "15", "--loglevel", "WARNING"]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["LOAD_SEEDED"] = "1"  # seeded above: the locustfile only checks that the collection exists
    print(f"[load] {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    log_path = report_dir / f"{args.profile}_locust.log"
    with open(log_path, "wb") as log:  # locust's own summary and warnings; tail shown on failure
        code = subprocess.call(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if code not in (0, 1):
        print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
    return code, prefix


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report_dir = Path(args.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)

    def _terminate(signum: int, _frame: object) -> None:  # tear down on SIGTERM too
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    redis = server = None
    try:
        host = args.host
        if not host:
            from tests.e2e_server import ServerProcess
            from tests.redis_server import RedisServer, find_redis_binary

            if not args.no_redis:
                if not find_redis_binary():
                    print("error: redis-server not found (install it, or pass --no-redis)", file=sys.stderr)
                    return 2
                redis = RedisServer().start()
            data_dir = Path(tempfile.mkdtemp(prefix="semsearch-load-"))
            server = ServerProcess(data_dir=data_dir, models=args.models,
                                   redis_url=redis.url if redis else None,
                                   env={"LOG_LEVEL": "warning"})
            print(f"[load] starting server on {server.url} (redis: {redis.url if redis else 'off'})",
                  file=sys.stderr, flush=True)
            server.start()
            host = server.url
        from locustfiles.common import SEED_DOCS, seed

        n_seed = SEED_DOCS if args.seed_docs is None else args.seed_docs
        print(f"[load] seeding {n_seed} documents", file=sys.stderr, flush=True)
        try:
            seed(host, n_seed)
        except Exception as exc:  # noqa: BLE001 - the service under test failed before the run
            print(f"FAIL: seeding the collection failed: {exc}")
            return 1
        code, prefix = run_locust(args, host, report_dir)
        stats_path = Path(f"{prefix}_stats.csv")
        if not stats_path.exists():
            print(f"error: locust exited with {code} and wrote no stats", file=sys.stderr)
            return 2
        rows = read_stats(stats_path)
        failures, p99 = summarize(rows)
        total = sum(int(_f(r, "Request Count")) for r in rows if r.get("Name") == "Aggregated")
        failures_csv = Path(f"{prefix}_failures.csv")
        if failures and failures_csv.exists():
            for row in read_stats(failures_csv)[:20]:
                print(f"  failure x{row.get('Occurrences')}: {row.get('Method')} {row.get('Name')}: "
                      f"{row.get('Error', '')[:200]}")
        print(f"[load] reports: {report_dir}/{args.profile}_stats.csv, {report_dir}/{args.profile}.html")
        verdict = 0
        if failures:
            print(f"FAIL: {failures} failed requests")
            verdict = 1
        if total == 0:
            print("FAIL: no requests were made")
            verdict = 1
        if args.p99_ms > 0 and p99 > args.p99_ms:
            print(f"FAIL: aggregated p99 {p99:.0f} ms exceeds the target {args.p99_ms:.0f} ms")
            verdict = 1
        if code not in (0, 1):  # 1 = locust saw failures, already reported above
            print(f"FAIL: locust exited with {code}")
            verdict = 1
        if verdict == 0:
            target = f" (p99 {p99:.0f} ms <= {args.p99_ms:.0f} ms)" if args.p99_ms > 0 else ""
            print(f"PASS: 0 failures{target}")
        return verdict
    finally:
        if server is not None:
            server.close()
            import shutil

            shutil.rmtree(server.data_dir, ignore_errors=True)
        if redis is not None:
            redis.close()


if __name__ == "__main__":
    sys.exit(main())

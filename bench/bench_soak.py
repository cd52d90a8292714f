"""Soak benchmark: a steady mixed load for a long time against a real server and a real Redis.

    python -m bench.bench_soak                       # 10 minutes, 20 users (+1 snapshot user)
    python -m bench.bench_soak --duration 1200 --users 30

Starts redis-server and `python -m app.cli serve` (tests/redis_server.py, tests/e2e_server.py)
on free loopback ports with a temporary DATA_DIR, seeds the collection (locustfiles/common.py),
then runs locust headless with bench/soak_locustfile.py (the locustfiles/mix.py user mix:
search 60%, embeddings 15%, similarity 10%, classify 5%, upserts 10%; plus one user taking and
deleting a snapshot every minute).  Every 10 s it samples the server's resident memory
(VmRSS), its CPU time and the machine's load average.

Report (bench/reports/soak.md): RSS over time and whether it plateaus (growth over the second
half of the run vs the first half), failed requests (must be 0), and latency percentiles of
the first and the last measured minutes (the warm-up minute excluded) as a ratio measured in
the same run: on a shared, noisy machine absolute numbers drift, the ratio says whether the
service itself degraded.  Not part of `make test`.  Exit 1 when a request failed or memory did
not plateau.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

REPORT = REPO_ROOT / "bench" / "reports" / "soak.md"
WARMUP_S = 60.0
WINDOW_S = 60.0


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100.0 * (len(s) - 1))))]


def cache_mb(url: str) -> float:
    """Bytes held by the in-process LRU cache (bounded by CACHE_LOCAL_MAX_BYTES), from /metrics."""
    import httpx

    try:
        text = httpx.get(url + "/metrics", timeout=10.0).text
    except httpx.HTTPError:
        return float("nan")
    for line in text.splitlines():
        if line.startswith("semsearch_cache_local_bytes "):
            return float(line.split()[1]) / 1e6
    return float("nan")


class Sampler(threading.Thread):
    def __init__(self, pid: int, url: str, t0: float, period_s: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.url, self.t0, self.period_s = pid, url, t0, period_s
        # t, rss MB, cpu s, load1, LRU cache MB
        self.samples: list[tuple[float, float, float, float, float]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            rss, cpu = rss_mb(self.pid), cpu_s(self.pid)
            if rss is not None and cpu is not None:
                self.samples.append((time.time() - self.t0, rss, cpu, os.getloadavg()[0],
                                     cache_mb(self.url)))
            self.stop_event.wait(self.period_s)


def read_requests(path: Path) -> list[tuple[float, str, float, bool]]:
    out = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 4:
            out.append((float(parts[0]), parts[1], float(parts[2]), parts[3] == "1"))
    return out


def window_stats(reqs: list[tuple[float, str, float, bool]], lo: float, hi: float) -> dict[str, float]:
    lat = [r[2] for r in reqs if lo <= r[0] < hi and r[3]]
    return {"n": len(lat), "p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99),
            "rps": len(lat) / max(1e-9, hi - lo)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=600, help="seconds of load (default 600)")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--spawn-rate", type=float, default=5.0)
    p.add_argument("--report", default=str(REPORT))
    p.add_argument("--note", default="", help="free text added to the report (e.g. other load)")
    p.add_argument("--cache-mb", type=float, default=24.0,
                   help="CACHE_LOCAL_MAX_BYTES of the server in MB (default 24: small enough that the "
                        "bounded LRU fills during the warm-up, so total RSS must plateau too)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra server setting (repeatable), e.g. --env MALLOC_ARENA_MAX=0")
    args = p.parse_args(argv)

    from locustfiles.common import SEED_DOCS, seed
    from tests.e2e_server import ServerProcess
    from tests.redis_server import RedisServer

    work = Path(tempfile.mkdtemp(prefix="semsearch-soak-"))
    req_log = work / "requests.tsv"
    redis = RedisServer().start()
    server_env = {"LOG_LEVEL": "warning",
                  "CACHE_LOCAL_MAX_BYTES": str(int(args.cache_mb * 1024 * 1024))}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--env wants KEY=VALUE, got {item!r}")
        server_env[key] = value
    server = ServerProcess(data_dir=work / "data", redis_url=redis.url, env=server_env)
    try:
        server.start()
        seed(server.url, SEED_DOCS)
        assert server.pid is not None
        t0 = time.time()
        sampler = Sampler(server.pid, server.url, t0)
        sampler.start()
        env = dict(os.environ, SOAK_REQUEST_LOG=str(req_log), LOAD_SEEDED="1",
                   PYTHONPATH=str(REPO_ROOT))
        cmd = [sys.executable, "-m", "locust", "-f", str(REPO_ROOT / "bench" / "soak_locustfile.py"),
               "--headless", "-u", str(args.users + 1), "-r", str(args.spawn_rate),
               "-t", f"{args.duration}s", "--host", server.url, "--only-summary",
               "--stop-timeout", "30", "--loglevel", "WARNING", "--csv", str(work / "soak")]
        print(f"[soak] {args.duration}s, {args.users} users + 1 snapshot user, server pid "
              f"{server.pid}, work dir {work}", file=sys.stderr, flush=True)
        with open(work / "locust.log", "wb") as log:
            code = subprocess.call(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler.stop_event.set()
        sampler.join()
        alive = server.running
        exit_code = server.stop()
    finally:
        server.close()
        redis.close()

    reqs = read_requests(req_log)
    failures = sum(1 for r in reqs if not r[3])
    by_name: dict[str, list[float]] = {}
    for r in reqs:
        by_name.setdefault(r[1], []).append(r[2])
    end = max((r[0] for r in reqs), default=t0)
    first = window_stats(reqs, t0 + WARMUP_S, t0 + WARMUP_S + WINDOW_S)
    last = window_stats(reqs, end - WINDOW_S, end + 1)
    samples = sampler.samples
    after_warm = [s[1] for s in samples if s[0] >= WARMUP_S] or [0.0]

    def slope(rows: list[tuple[float, float]]) -> float:  # MB per minute, least squares
        if len(rows) < 2:
            return 0.0
        mt = statistics.fmean(t for t, _ in rows)
        mv = statistics.fmean(v for _, v in rows)
        den = sum((t - mt) ** 2 for t, _ in rows) or 1.0
        return 60.0 * sum((t - mt) * (v - mv) for t, v in rows) / den

    half = len(samples) // 2
    rss_first = slope([(s[0], s[1]) for s in samples[:half] if s[0] >= WARMUP_S])
    rss_last = slope([(s[0], s[1]) for s in samples[half:]])
    # what is not the (bounded) LRU cache: the part that must not keep growing
    other_last = slope([(s[0], s[1] - s[4]) for s in samples[half:] if s[4] == s[4]])
    cache_bound_mb = args.cache_mb * 1024 * 1024 / 1e6
    cache_full = bool(samples[half:]) and all(s[4] >= 0.9 * cache_bound_mb for s in samples[half:])
    growth_second_half = samples[-1][1] - samples[half][1] if samples else 0.0
    # plateau: outside the bounded cache, memory grows < 1 MB/min over the second half
    # and when the LRU sat at its bound for the whole second half, total RSS must not grow either
    plateau = other_last < 1.0 and (not cache_full or rss_last < 1.0)
    ratio = {k: last[k] / first[k] if first[k] else float("nan") for k in ("p50", "p95", "p99")}
    cpu_total = samples[-1][2] - samples[0][2] if len(samples) > 1 else 0.0
    span = samples[-1][0] - samples[0][0] if len(samples) > 1 else 1.0
    loads = [s[3] for s in samples]

    lines = [
        "# Soak benchmark", "",
        f"`python -m bench.bench_soak --duration {args.duration} --users {args.users} "
        f"--cache-mb {args.cache_mb:g}" + "".join(f" --env {e}" for e in args.env) + "` - "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0))}.",
        "",
        f"Real server (`python -m app.cli serve`, minilm int8, LOG_LEVEL=warning) + real redis-server, "
        f"locust mix (search 60%, embeddings 15%, similarity 10%, classify 5%, upserts 10%; think "
        f"time 0.5-2 s) with {args.users} users, plus 1 user taking and deleting a snapshot every "
        f"minute. Collection seeded with {SEED_DOCS} documents; upserts overwrite within a 500-id pool.",
        "",
        "## Verdict", "",
        f"- requests: {len(reqs)}, **failed: {failures}**; locust exit code {code}; server alive at the "
        f"end: {alive}, exit code after SIGTERM: {exit_code}",
        f"- resident memory: start {samples[0][1]:.0f} MB, after warm-up min {min(after_warm):.0f} / "
        f"max {max(after_warm):.0f} MB, end {samples[-1][1]:.0f} MB ({growth_second_half:+.1f} MB over "
        f"the second half); slope {rss_first:+.2f} MB/min in the first half (after warm-up), "
        f"{rss_last:+.2f} MB/min in the second; the in-process LRU cache (CACHE_LOCAL_MAX_BYTES = "
        f"{cache_bound_mb:.1f} MB) holds {samples[-1][4]:.1f} MB at the end "
        f"({'at its bound for the whole second half' if cache_full else 'not yet full'}); memory "
        f"outside it grows {other_last:+.2f} MB/min over the second half -> "
        f"**{'plateau' if plateau else 'STILL GROWING'}** (criterion: < 1 MB/min outside the "
        "LRU, and for total RSS too once the LRU is full)",
        f"- latency, first measured minute (t={WARMUP_S:.0f}-{WARMUP_S + WINDOW_S:.0f} s) vs last minute: "
        f"p50 {first['p50']:.0f} -> {last['p50']:.0f} ms (x{ratio['p50']:.2f}), "
        f"p95 {first['p95']:.0f} -> {last['p95']:.0f} ms (x{ratio['p95']:.2f}), "
        f"p99 {first['p99']:.0f} -> {last['p99']:.0f} ms (x{ratio['p99']:.2f}); "
        f"throughput {first['rps']:.1f} -> {last['rps']:.1f} req/s",
        f"- server CPU: {cpu_total / max(span, 1e-9) * 100:.0f}% of one core on average; machine load "
        f"average (1 min) during the run: min {min(loads):.1f}, median {statistics.median(loads):.1f}, "
        f"max {max(loads):.1f} on {os.cpu_count()} cores (other work on the machine competes for the "
        "same cores: compare the ratios, not the absolute latencies)",
    ]
    if args.env:
        lines += [f"- extra server settings: {', '.join(args.env)}"]
    if args.note:
        lines += [f"- note: {args.note}"]
    lines += ["", "## Resident memory over time", "",
              "| t (s) | RSS (MB) | LRU cache (MB) | server CPU (s) | load1 |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {t:.0f} | {rss:.1f} | {cache:.1f} | {cpu:.1f} | {ld:.2f} |"
              for t, rss, cpu, ld, cache in samples]
    lines += ["", "## Latency per endpoint (whole run, ms)", "",
              "| endpoint | requests | p50 | p95 | p99 | max |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in sorted(by_name, key=lambda n: -len(by_name[n])):
        v = by_name[name]
        lines.append(f"| {name} | {len(v)} | {pct(v, 50):.0f} | {pct(v, 95):.0f} | {pct(v, 99):.0f} | "
                     f"{max(v):.0f} |")
    lines += ["", "## Per-minute latency (all endpoints, ms)", "",
              "| minute | requests | failed | p50 | p95 | p99 |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    minute = 0
    while t0 + minute * 60 <= end:
        lo, hi = t0 + minute * 60, t0 + (minute + 1) * 60
        w = window_stats(reqs, lo, hi)
        failed = sum(1 for r in reqs if lo <= r[0] < hi and not r[3])
        lines.append(f"| {minute} | {w['n']} | {failed} | {w['p50']:.0f} | {w['p95']:.0f} | {w['p99']:.0f} |")
        minute += 1
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:14]))
    print(f"[soak] report: {report}")
    return 0 if failures == 0 and plateau and len(reqs) > 0 else 1


if __name__ == "__main__":
    sys.exit(main())

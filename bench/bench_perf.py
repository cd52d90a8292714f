"""Performance benchmark: encoder, HTTP embeddings, search latency and service overhead.

    python -m bench.bench_perf            # full run (~10 min on 2 cores), writes bench/reports/perf.md
    python -m bench.bench_perf --quick    # smoke run (~2 min), writes bench/reports/perf-quick.md

Everything is measured in one run, on the same real sentences and the same thread budget
(``--threads``, default: every core), each figure repeated ``--reps`` times and reported as
min / median / max.  The targets are ratios against baselines measured in the same run, because
the machines this runs on are shared and noisy; the report records the load average too.

1. encoder throughput in-process: sentence-transformers (PyTorch fp32) vs ONNX fp32 vs ONNX int8
2. POST /v1/embeddings, one sentence per request, 32 concurrent clients: micro-batching on vs off
3. search latency on a 100k-document collection, 16 concurrent clients, cache cold and warm
4. service overhead: HTTP throughput at saturation / in-process int8 throughput, same inputs
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .loadgen import LoadResult, RequestSource, run_closed_loop, send_sequential
from .perf_env import Spread, busy_processes, machine, sentences

REPORTS = Path(__file__).parent / "reports"


@dataclass
class Config:
    quick: bool
    threads: int
    reps: int
    enc_sentences: int          # sentences per encoder measurement (test 1)
    http_s: float               # measured seconds per HTTP run
    warmup_s: float
    clients_embed: int = 32
    sat_clients: int = 4
    sat_batch: int = 64
    docs: int = 100_000
    base_sentences: int = 1024  # real sentences encoded to derive the collection's vectors
    upsert_batch: int = 2000
    clients_search: int = 16
    search_s: float = 6.0
    index: dict[str, Any] = field(default_factory=lambda: {"type": "ivf", "nlist": 256, "nprobe": 16})


@dataclass
class Results:
    encoders: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    http: dict[str, list[LoadResult]] = field(default_factory=dict)
    raw_sat: list[float] = field(default_factory=list)       # in-process int8, same batches
    raw_sat_merged: list[float] = field(default_factory=list)  # ... all of them in one encode()
    search: dict[str, list[LoadResult]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seed_s: float = 0.0
    seed_docs: int = 0
    cache_stats: dict[str, str] = field(default_factory=dict)
    server_env: dict[str, dict[str, str]] = field(default_factory=dict)


def log(msg: str) -> None:
    print(f"[bench_perf {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- 1. encoders
def bench_encoders(cfg: Config, pool: list[str], res: Results) -> Any:
    """In-process sentences/s; returns the int8 encoder (reused by tests 3 and 4)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from models.build import materialize_source
    from models.encoder import OnnxEncoder
    from models.registry import find_built, load_registry

    torch.set_num_threads(cfg.threads)
    specs = load_registry()
    built = find_built(specs["minilm"], specs)
    if built is None:
        raise SystemExit("minilm is not built: run `python -m models build minilm` (make setup)")
    st = SentenceTransformer(str(materialize_source(specs["minilm"])), device="cpu")
    fp32 = OnnxEncoder(built, "fp32", intra_op_threads=cfg.threads)
    int8 = OnnxEncoder(built, "int8", intra_op_threads=cfg.threads)
    runners = {
        "st": lambda b: st.encode(b, batch_size=len(b), normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False),
        "onnx-fp32": lambda b: fp32.encode(b).vectors,
        "onnx-int8": lambda b: int8.encode(b).vectors,
    }
    texts = pool[:cfg.enc_sentences]
    for fn in runners.values():  # warm-up: first-call allocations, thread pools
        fn(texts[:64])
    for rep in range(cfg.reps):
        # batch 1, int8 only: with batch 32 it bounds what micro-batching can gain (test 2)
        t0 = time.perf_counter()
        for t in texts[:128]:
            int8.encode([t])
        rate = 128 / (time.perf_counter() - t0)
        res.encoders.setdefault(("onnx-int8", 1), []).append(rate)
        log(f"encoder rep {rep + 1} batch 1 onnx-int8: {rate:.1f} sentences/s")
        for bs in (32, 64):
            batches = [texts[i:i + bs] for i in range(0, len(texts), bs)]
            for name, fn in runners.items():  # interleaved, so all three share the same noise
                t0 = time.perf_counter()
                for b in batches:
                    fn(b)
                rate = len(texts) / (time.perf_counter() - t0)
                res.encoders.setdefault((name, bs), []).append(rate)
                log(f"encoder rep {rep + 1} batch {bs} {name}: {rate:.1f} sentences/s")
    del st, fp32
    gc.collect()
    return int8


# ----------------------------------------------------------------------------- servers
def _server(cfg: Config, env: dict[str, str], redis_url: str | None = None) -> Any:
    from tests.e2e_server import ServerProcess

    base = {"INTRA_OP_THREADS": str(cfg.threads), "INTER_OP_THREADS": "1"}
    return ServerProcess(env={**base, **env}, redis_url=redis_url, startup_timeout_s=300)


def _embed_bodies(texts: Sequence[str]) -> list[bytes]:
    return [json.dumps({"input": t, "model": "minilm"}).encode() for t in texts]


def _metric_lines(url: str, prefixes: Sequence[str]) -> dict[str, str]:
    import httpx

    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError as exc:
        return {"error": str(exc)}
    return {ln.split(" ")[0]: ln.split(" ")[-1] for ln in text.splitlines()
            if any(ln.startswith(p) for p in prefixes)}


# ----------------------------------------------------------------------------- 2 + 4. embeddings
def bench_embeddings(cfg: Config, pool: list[str], int8: Any, res: Results) -> None:
    # CACHE_LOCAL_MAX_ITEMS=1: the embedding cache keeps one entry, so every (distinct, cycled)
    # sentence is a miss and is encoded; 0 is refused by LocalLRU.  No REDIS_URL here.
    common = {"CACHE_LOCAL_MAX_ITEMS": "1"}
    env_on = {**common, "MICRO_BATCHING": "true"}
    env_off = {**common, "MICRO_BATCHING": "false"}
    res.server_env["embeddings on"] = env_on
    res.server_env["embeddings off"] = env_off
    single = _embed_bodies(pool)
    sat_batches = [pool[i:i + cfg.sat_batch] for i in range(0, len(pool) - cfg.sat_batch + 1, cfg.sat_batch)]
    sat_batches = sat_batches[:max(4, cfg.enc_sentences // cfg.sat_batch)]
    sat_bodies = [json.dumps({"input": b, "model": "minilm"}).encode() for b in sat_batches]
    sat_texts = sum(len(b) for b in sat_batches)
    on, off = _server(cfg, env_on), _server(cfg, env_off)
    try:
        log("starting servers (micro-batching on / off)")
        on.start(wait=False)
        off.start(wait=False)
        on.wait_ready()
        off.wait_ready()
        host = "127.0.0.1"
        for rep in range(cfg.reps):
            for name, srv in (("single on", on), ("single off", off)):
                r = run_closed_loop(host, srv.port, RequestSource(single, "/v1/embeddings"),
                                    concurrency=cfg.clients_embed, duration_s=cfg.http_s,
                                    warmup_s=cfg.warmup_s, server_pids=[srv.pid],
                                    watch_headers=[b"x-cache-hits"])
                res.http.setdefault(name, []).append(r)
                log(f"http rep {rep + 1} {name}: {r.throughput:.1f} req/s, p50 {r.pct(50):.1f} ms, "
                    f"client cpu {r.client_cpu:.2f}, server cpu {r.server_cpu:.2f}, errors {r.errors}, "
                    f"cache hits {r.header_counts}")
            # 4. saturation: the same 64-sentence batches in-process and over HTTP
            t0 = time.perf_counter()
            for b in sat_batches:
                int8.encode(b)
            raw = sat_texts / (time.perf_counter() - t0)
            res.raw_sat.append(raw)
            # The server's queue merges the concurrent requests' texts, sorts them and splits on
            # the token budget: one encode() of all the texts is the same grouping in-process.
            flat = [t for b in sat_batches for t in b]
            t0 = time.perf_counter()
            int8.encode(flat)
            res.raw_sat_merged.append(len(flat) / (time.perf_counter() - t0))
            r = run_closed_loop(host, on.port, RequestSource(sat_bodies, "/v1/embeddings"),
                                concurrency=cfg.sat_clients, duration_s=cfg.http_s,
                                warmup_s=cfg.warmup_s, server_pids=[on.pid])
            res.http.setdefault("saturation", []).append(r)
            log(f"saturation rep {rep + 1}: in-process {raw:.1f} sentences/s, HTTP "
                f"{r.throughput * cfg.sat_batch:.1f} sentences/s (client cpu {r.client_cpu:.2f}, "
                f"server cpu {r.server_cpu:.2f}, errors {r.errors})")
        res.cache_stats["embeddings on"] = json.dumps(_metric_lines(on.url, (
            "semsearch_cache_hits", "semsearch_encoder_batches_total", "semsearch_encoder_texts_total")))
    finally:
        on.close()
        off.close()


# ----------------------------------------------------------------------------- 3. search
def _doc_vectors(base: np.ndarray, n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors near the real sentence vectors: each is one base sentence plus a quarter
    of another one plus a little noise, normalised.  Returns (vectors, base index per vector)."""
    rng = np.random.default_rng(seed)
    j = np.arange(n) % len(base)
    k = rng.integers(0, len(base), n)
    v = base[j] + 0.25 * base[k] + rng.normal(0.0, 0.02, (n, base.shape[1])).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.astype(np.float32), j


def _seed_collection(url: str, name: str, cfg: Config, texts: list[str], base: np.ndarray,
                     res: Results) -> None:
    import httpx

    vecs, src = _doc_vectors(base, cfg.docs)
    with httpx.Client(base_url=url, timeout=600) as client:
        r = client.put(f"/v1/collections/{name}", json={"model": "minilm", "index": cfg.index})
        r.raise_for_status()
        t0 = time.perf_counter()
        for start in range(0, cfg.docs, cfg.upsert_batch):
            stop = min(cfg.docs, start + cfg.upsert_batch)
            rounded = np.round(vecs[start:stop].astype(np.float64), 5).tolist()  # short JSON
            docs = [{"id": f"d{i:06d}", "text": texts[src[i]],
                     "metadata": {"shard": int(i % 16), "variant": int(i // len(base))},
                     "vector": rounded[i - start]} for i in range(start, stop)]
            body = json.dumps({"documents": docs}).encode()
            r = client.post(f"/v1/collections/{name}/documents", content=body,
                            headers={"content-type": "application/json"})
            if r.status_code != 200:
                raise RuntimeError(f"upsert failed: {r.status_code} {r.text[:500]}")
            if (stop // cfg.upsert_batch) % 10 == 0 or stop == cfg.docs:
                log(f"seeded {stop}/{cfg.docs} documents ({time.perf_counter() - t0:.0f}s)")
        res.seed_s = time.perf_counter() - t0
        info = client.get(f"/v1/collections/{name}").json()
        res.seed_docs = int(info.get("count", info.get("documents", cfg.docs)) or cfg.docs)
        res.notes.append(f"collection after seeding: {json.dumps(info)[:400]}")


def bench_search(cfg: Config, pool: list[str], int8: Any, res: Results) -> None:
    from tests.redis_server import RedisServer

    from .perf_env import extra_query_sentences

    base_texts = pool[:cfg.base_sentences]
    log(f"encoding {len(base_texts)} base sentences in-process (int8)")
    base = int8.encode(base_texts).vectors
    warm_set = pool[-256:] if not cfg.quick else pool[-64:]
    cold_pool = pool[:len(pool) - len(warm_set)] + extra_query_sentences(pool)
    res.notes.append(f"search: {len(cold_pool)} distinct cold query sentences available, "
                     f"{len(warm_set)} warm ones")
    env = {"INDEX_SNAPSHOT_EVERY_WRITES": "100000000", "INDEX_SNAPSHOT_EVERY_S": "86400",
           "MAX_DOCUMENTS_PER_UPSERT": str(cfg.upsert_batch)}
    res.server_env["search"] = {**env, "REDIS_URL": "redis://127.0.0.1:<free port>/0"}
    name = "perf100k"
    path = f"/v1/collections/{name}/search"
    host = "127.0.0.1"

    def body(q: str) -> bytes:
        return json.dumps({"query": q, "top_k": 10}).encode()

    with RedisServer() as redis_srv:
        srv = _server(cfg, env, redis_url=redis_srv.url)
        try:
            srv.start()
            log(f"seeding {cfg.docs} documents with precomputed vectors, index {cfg.index}")
            _seed_collection(srv.url, name, cfg, base_texts, base, res)
            pids = [srv.pid, redis_srv._proc.pid] if redis_srv._proc else [srv.pid]
            cold_src = RequestSource([body(q) for q in cold_pool], path, cycle=False)
            budget = len(cold_pool) // cfg.reps - 100   # queries per repetition, warm-ups included
            warm_bodies = [body(q) for q in warm_set]
            statuses = send_sequential(host, srv.port, RequestSource(warm_bodies, path))
            if any(s != 200 for s in statuses):
                raise RuntimeError(f"warm-set priming failed: {sorted(set(statuses))}")

            def run(label: str, src: RequestSource, conc: int, duration: float,
                    rate: float | None = None, max_requests: int | None = None) -> LoadResult:
                r = run_closed_loop(host, srv.port, src, concurrency=conc, duration_s=duration,
                                    warmup_s=min(0.5, cfg.warmup_s), server_pids=pids, rate=rate,
                                    max_requests=max_requests)
                res.search.setdefault(label, []).append(r)
                log(f"search {label}: {r.requests} queries, {r.throughput:.1f}/s, p50 {r.pct(50):.2f} "
                    f"p95 {r.pct(95):.2f} p99 {r.pct(99):.2f} ms, encoded {len(r.batch_sizes)}, "
                    f"client cpu {r.client_cpu:.2f}, server+redis cpu {r.server_cpu:.2f}, errors {r.errors}")
                return r

            for _ in range(cfg.reps):
                c = run("cold", cold_src, cfg.clients_search, cfg.search_s, max_requests=int(budget * 0.6))
                run("cold, 50% load", cold_src, cfg.clients_search, cfg.search_s,
                    rate=max(1.0, 0.5 * c.throughput), max_requests=int(budget * 0.3))
                w = run("warm", RequestSource(warm_bodies, path), cfg.clients_search, cfg.search_s)
                run("warm, 50% load", RequestSource(warm_bodies, path), cfg.clients_search,
                    cfg.search_s, rate=0.5 * w.throughput)
                run("warm, 1 client", RequestSource(warm_bodies, path), 1, cfg.search_s / 2)
            res.cache_stats["search"] = json.dumps(_metric_lines(srv.url, (
                "semsearch_cache_hits", "semsearch_cache_misses")))
        finally:
            srv.close()


# ----------------------------------------------------------------------------- main
def make_config(args: argparse.Namespace) -> Config:
    threads = args.threads or os.cpu_count() or 1
    if args.quick:
        cfg = Config(quick=True, threads=threads, reps=args.reps or 1, enc_sentences=128,
                     http_s=2.0, warmup_s=0.5, docs=10_000, base_sentences=256, search_s=2.0)
    else:
        cfg = Config(quick=False, threads=threads, reps=args.reps or 3, enc_sentences=256,
                     http_s=6.0, warmup_s=1.5)
    if args.docs:
        cfg.docs = args.docs
    if args.index:
        cfg.index = json.loads(args.index)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    from .perf_report import write_report

    ap = argparse.ArgumentParser(prog="python -m bench.bench_perf", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 rep, short runs, 10k documents")
    ap.add_argument("--threads", type=int, default=0, help="thread budget (default: every core)")
    ap.add_argument("--reps", type=int, default=0, help="repetitions (default 3; quick 1)")
    ap.add_argument("--docs", type=int, default=0, help="documents in the search collection")
    ap.add_argument("--index", default="", help='index config JSON, default {"type": "ivf", ...}')
    ap.add_argument("--only", default="", help="comma list of parts to run: encoders,http,search")
    ap.add_argument("--report", default="", help="report path (default bench/reports/perf.md)")
    ap.add_argument("--rerender", default="", metavar="PICKLE",
                    help="rewrite the report from the raw results a previous run saved (no measuring)")
    args = ap.parse_args(list(argv) if argv is not None else None)
    if args.rerender:
        with open(args.rerender, "rb") as fh:
            saved = pickle.load(fh)
        path = Path(args.report) if args.report else saved["report"]
        write_report(path, saved["cfg"], saved["env"], saved["res"], saved["pool"],
                     saved["elapsed"], saved["cmd"])
        log(f"report rewritten from {args.rerender}: {path}")
        return 0
    cfg = make_config(args)
    parts = set(args.only.split(",")) if args.only else {"encoders", "http", "search"}
    report = Path(args.report) if args.report else REPORTS / ("perf-quick.md" if cfg.quick else "perf.md")
    started = time.perf_counter()
    env = machine()
    log(f"{env.nproc} cores ({env.cpu_model}), load {env.load_start}, busy: {env.busy_start}")
    pool = sentences()
    res = Results()
    int8 = None
    if "encoders" in parts:
        int8 = bench_encoders(cfg, pool, res)
    if int8 is None:
        from models.encoder import OnnxEncoder
        from models.registry import find_built, load_registry
        specs = load_registry()
        int8 = OnnxEncoder(find_built(specs["minilm"], specs), "int8", intra_op_threads=cfg.threads)
    if "http" in parts:
        bench_embeddings(cfg, pool, int8, res)
    if "search" in parts:
        bench_search(cfg, pool, int8, res)
    env.load_end = os.getloadavg()
    env.busy_end = busy_processes()
    elapsed = time.perf_counter() - started
    given = list(argv) if argv is not None else sys.argv[1:]
    cmd = ("python -m bench.bench_perf " + " ".join(given)).rstrip()
    write_report(report, cfg, env, res, pool, elapsed, cmd)
    raw = Path(tempfile.gettempdir()) / f"bench_perf_{'quick' if cfg.quick else 'full'}.pickle"
    with open(raw, "wb") as fh:  # raw figures, for --rerender (outside the repository)
        pickle.dump({"report": report, "cfg": cfg, "env": env, "res": res, "pool": pool,
                     "elapsed": elapsed, "cmd": cmd}, fh)
    log(f"done in {elapsed:.0f}s; report: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

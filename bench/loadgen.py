"""A lean closed-loop HTTP/1.1 load generator for the performance benchmark.

Why not httpx: on a 2-core machine the client shares the CPU with the server under test, and
httpx spends several times more CPU per request than the server's own HTTP layer.  This client
keeps N raw asyncio keep-alive connections, sends pre-built request bytes and reads the response
by Content-Length (or chunked encoding) without parsing the JSON body, so almost all of the
machine is left to the server.  The CPU it does use is measured and reported.

    result = run_closed_loop("127.0.0.1", port, RequestSource(bodies, "/v1/embeddings"),
                             concurrency=32, duration_s=6, warmup_s=1, server_pids=[pid])
"""
from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


def build_post(path: str, body: bytes, host: str = "127.0.0.1") -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class RequestSource:
    """Pre-built requests handed out in order.  ``cycle=False``: each request is sent at most
    once over the life of the source (distinct queries for cache-cold measurements)."""

    def __init__(self, bodies: Sequence[bytes], path: str, cycle: bool = True) -> None:
        self.requests = [build_post(path, b) for b in bodies]
        self._it = itertools.cycle(self.requests) if cycle else iter(self.requests)
        self.cycle = cycle

    def next(self) -> bytes | None:
        return next(self._it, None)


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reconnects = 0

    @classmethod
    async def open(cls, host: str, port: int) -> "Connection":
        conn = cls(host, port)
        await conn._connect()
        return conn

    async def _connect(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def request(self, raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            # The server closed an idle keep-alive connection (uvicorn: after 5 s) before it
            # read this request: reconnect and send it again, once.
            if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                raise
            self.reconnects += 1
            await self._connect()
            assert self.reader is not None and self.writer is not None
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(b":")
                headers[k.strip().lower()] = v.strip()
        if b"content-length" in headers:
            body = await self.reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            body = b"".join(parts)
        else:
            raise RuntimeError(f"response without a length (status {status})")
        return status, headers, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class LoadResult:
    requests: int                     # 2xx responses in the measured window
    wall_s: float
    errors: dict[int, int]            # status -> count (non-2xx)
    latencies_ms: np.ndarray          # client-side, per 2xx response
    server_ms: np.ndarray             # x-process-time-ms header (time inside the server app)
    client_cpu: float                 # cores used by this process (1.0 = one core busy)
    server_cpu: float                 # cores used by the server processes
    header_counts: dict[str, int] = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=list)
    exhausted: bool = False

    @property
    def throughput(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")


def _cpu_seconds(pids: Sequence[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


async def _closed_loop(host: str, port: int, source: RequestSource, concurrency: int,
                       duration_s: float, warmup_s: float, server_pids: Sequence[int],
                       max_requests: int | None, watch_headers: Sequence[bytes],
                       rate: float | None) -> LoadResult:
    conns = [await Connection.open(host, port) for _ in range(concurrency)]
    lat: list[float] = []
    srv: list[float] = []
    sizes: list[int] = []
    errors: dict[int, int] = {}
    counts = {h.decode(): 0 for h in watch_headers}
    state = {"measuring": False, "stop_at": 0.0, "sent": 0, "exhausted": False}

    # Paced mode: each client sends one request every `interval` seconds (or at once when it is
    # late), clients staggered, so the offered load is `rate` requests/s in total.
    interval = concurrency / rate if rate else 0.0

    async def worker(conn: Connection, slot: int) -> None:
        next_at = time.perf_counter() + interval * slot / concurrency
        while True:
            if interval:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at = max(next_at + interval, time.perf_counter())
            now = time.perf_counter()
            if now >= state["stop_at"]:
                return
            if state["measuring"] and max_requests is not None and state["sent"] >= max_requests:
                return
            raw = source.next()
            if raw is None:
                state["exhausted"] = True
                return
            if state["measuring"]:
                state["sent"] += 1
            measuring = state["measuring"]
            t0 = time.perf_counter()
            status, headers, _ = await conn.request(raw)
            dt = (time.perf_counter() - t0) * 1000.0
            if not measuring:
                continue
            if 200 <= status < 300:
                lat.append(dt)
                pt = headers.get(b"x-process-time-ms")
                if pt is not None:
                    srv.append(float(pt))
                bs = headers.get(b"x-batch-size")
                if bs is not None:
                    sizes.append(int(bs))
                for h in watch_headers:  # responses where the header is present and not "0"
                    if headers.get(h, b"0") != b"0":
                        counts[h.decode()] += 1
            else:
                errors[status] = errors.get(status, 0) + 1

    try:
        if warmup_s > 0:
            state["stop_at"] = time.perf_counter() + warmup_s
            await asyncio.gather(*(worker(c, i) for i, c in enumerate(conns)))
        state["measuring"] = True
        cpu0, scpu0 = time.process_time(), _cpu_seconds(server_pids)
        t0 = time.perf_counter()
        state["stop_at"] = t0 + duration_s
        await asyncio.gather(*(worker(c, i) for i, c in enumerate(conns)))
        wall = time.perf_counter() - t0
        cpu1, scpu1 = time.process_time(), _cpu_seconds(server_pids)
    finally:
        for c in conns:
            c.close()
    return LoadResult(requests=len(lat), wall_s=wall, errors=errors,
                      latencies_ms=np.asarray(lat), server_ms=np.asarray(srv),
                      client_cpu=(cpu1 - cpu0) / wall, server_cpu=(scpu1 - scpu0) / wall,
                      header_counts=counts, batch_sizes=sizes, exhausted=bool(state["exhausted"]))


def run_closed_loop(host: str, port: int, source: RequestSource, *, concurrency: int,
                    duration_s: float, warmup_s: float = 1.0, server_pids: Sequence[int] = (),
                    max_requests: int | None = None, watch_headers: Sequence[bytes] = (),
                    rate: float | None = None) -> LoadResult:
    """``concurrency`` clients, each sending its next request as soon as the previous answer
    arrived (no think time), for ``duration_s`` after ``warmup_s``.  With ``rate``, the clients
    are paced to offer ``rate`` requests/s in total instead (latency below saturation)."""
    return asyncio.run(_closed_loop(host, port, source, concurrency, duration_s, warmup_s,
                                    server_pids, max_requests, watch_headers, rate))


async def _one_by_one(host: str, port: int, raws: Sequence[bytes]) -> list[int]:
    conn = await Connection.open(host, port)
    try:
        return [(await conn.request(r))[0] for r in raws]
    finally:
        conn.close()


def send_sequential(host: str, port: int, source: RequestSource) -> list[int]:
    """Every request of ``source`` once, one at a time (cache priming); returns the statuses."""
    return asyncio.run(_one_by_one(host, port, source.requests))

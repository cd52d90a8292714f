"""A small threaded load generator for the fault-injection tests (tests/test_faults*.py).

Each worker loops over its request maker with its own httpx client until stopped, recording
for every request: start/end time, name, status (or the exception's class name).  Bounded: a
worker stops by itself after `max_s` seconds.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

# (client, worker index, iteration) -> (name, response)
Maker = Callable[[httpx.Client, int, int], tuple[str, httpx.Response]]


@dataclass
class Outcome:
    start: float
    end: float
    name: str
    status: int | None
    error: str | None = None
    info: Any = None


@dataclass
class Load:
    url: str
    makers: list[Maker]
    keepalive: bool = True
    max_s: float = 120.0
    stop_on_error: bool = False
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i, m), daemon=True)
                         for i, m in enumerate(self.makers)]

    def _run(self, index: int, maker: Maker) -> None:
        limits = httpx.Limits(max_keepalive_connections=1 if self.keepalive else 0)
        deadline = time.monotonic() + self.max_s
        with httpx.Client(base_url=self.url, timeout=60.0, limits=limits) as client:
            i = 0
            while not self._stop.is_set() and time.monotonic() < deadline:
                t0 = time.time()
                try:
                    name, resp = maker(client, index, i)
                    out = Outcome(t0, time.time(), name, resp.status_code,
                                  info=getattr(resp, "extra", None))
                except httpx.HTTPError as exc:
                    out = Outcome(t0, time.time(), f"worker{index}", None, type(exc).__name__)
                with self._lock:
                    self.outcomes.append(out)
                if out.error and self.stop_on_error:
                    return
                i += 1

    def start(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout_s: float = 90.0) -> list[Outcome]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout_s)
        return sorted(self.outcomes, key=lambda o: o.start)

    def join(self, timeout_s: float = 90.0) -> list[Outcome]:
        for t in self._threads:
            t.join(timeout_s)
        return sorted(self.outcomes, key=lambda o: o.start)

"""A real, throw-away redis-server for tests (never fakeredis, never the machine's :6379).

    with RedisServer() as server:          # free port on 127.0.0.1, temp dir, no persistence
        r = server.client()                # plain sync redis.Redis
        server.stop(); server.start()      # outage and recovery on the SAME port
        server.kill()                      # SIGKILL, for crash tests

Fixtures for conftest.py: `from tests.redis_server import redis_server, fresh_redis_server`.
`redis_server` is session-scoped (flush or namespace your keys); `fresh_redis_server` is a
private server per test, for tests that stop, kill or pause it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.procs import free_port, kill, terminate

_LIVE: "weakref.WeakSet[RedisServer]" = weakref.WeakSet()


def find_redis_binary() -> str | None:
    explicit = os.environ.get("REDIS_SERVER_BIN")
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None


class RedisServer:
    """One redis-server child process; `start()` again after `stop()`/`kill()` reuses the port."""

    def __init__(self, port: int | None = None, binary: str | None = None,
                 startup_timeout_s: float = 10.0) -> None:
        binary = binary or find_redis_binary()
        if not binary:
            raise FileNotFoundError("redis-server not found (set REDIS_SERVER_BIN)")
        self.binary = binary
        self.port = port or free_port()
        if self.port == 6379:
            raise ValueError("refusing to run a test server on the machine's Redis port 6379")
        self.startup_timeout_s = startup_timeout_s
        self._dir = tempfile.mkdtemp(prefix="semsearch-redis-")
        self._proc: subprocess.Popen[bytes] | None = None
        _LIVE.add(self)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return Path(self._dir) / "redis.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self, **kwargs: object) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 5.0)
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)  # type: ignore[arg-type]

    def start(self) -> "RedisServer":
        if self.running:
            return self
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self._dir,
                "--daemonize", "no", "--logfile", str(self.log_path)]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout_s
        probe = self.client(socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self._proc.returncode}: "
                                       f"{self._log_tail()}")
                try:
                    if probe.ping():
                        return self
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise TimeoutError(f"redis-server did not answer PING: {self._log_tail()}")
                time.sleep(0.02)
        finally:
            probe.close()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Graceful stop (SIGTERM; nothing to save). The port stays reserved for `start()`."""
        if self._proc is None:
            return
        terminate(self._proc, timeout_s)
        self._proc = None

    def kill(self) -> None:
        if self._proc is None:
            return
        kill(self._proc)
        self._proc = None

    def pause(self, ms: int) -> None:
        """Make the server unresponsive to every client for `ms` (CLIENT PAUSE ... ALL)."""
        c = self.client()
        try:
            c.execute_command("CLIENT", "PAUSE", int(ms), "ALL")
        finally:
            c.close()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _cleanup_all() -> None:  # last resort if a test run is interrupted
    for server in list(_LIVE):
        server.close()


def _make_server() -> RedisServer:
    if not find_redis_binary():
        pytest.skip("redis-server binary not installed")
    return RedisServer().start()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = _make_server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    server = _make_server()
    try:
        yield server
    finally:
        server.close()

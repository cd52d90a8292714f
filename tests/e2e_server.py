"""A real `python -m app.cli serve` process for end-to-end tests (and for locustfiles/run.py).

    with ServerProcess() as srv:                 # free port, temp DATA_DIR, MODELS=minilm
        httpx.get(srv.url + "/readyz")
        srv.stop()                               # SIGTERM: graceful drain; returns the exit code
        srv.start()                              # same port, same DATA_DIR (restart)
        srv.kill()                               # SIGKILL, for crash/recovery tests

    ServerProcess(env={"API_KEYS": "k:write"}, redis_url=redis_server.url, data_dir=path)

The process runs from the repository root with this interpreter; its output (JSON logs) goes to
`srv.log_path` (`srv.log_text()` to read it; it is printed in failure messages). Fixtures:
`from tests.e2e_server import e2e_server` (module-scoped) or `fresh_e2e_server` (per test).
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from tests.procs import free_port, kill, terminate  # noqa: F401 (free_port: re-exported)

REPO_ROOT = Path(__file__).resolve().parents[1]
_LIVE: "weakref.WeakSet[ServerProcess]" = weakref.WeakSet()


class ServerProcess:
    """One service process.  `data_dir=None` makes a temp dir that `close()` removes; a given
    `data_dir` is left in place.  `env` entries override the defaults (None removes a variable)."""

    def __init__(self, *, data_dir: Path | str | None = None, port: int | None = None,
                 models: str = "minilm", redis_url: str | None = None,
                 env: Mapping[str, str | None] | None = None, startup_timeout_s: float = 120.0,
                 ready_path: str = "/readyz") -> None:
        self._tmp = tempfile.mkdtemp(prefix="semsearch-e2e-")
        self.data_dir = Path(data_dir) if data_dir is not None else Path(self._tmp) / "data"
        self.port = port or free_port()
        self.models = models
        self.redis_url = redis_url
        self.extra_env = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.ready_path = ready_path
        self.log_path = Path(self._tmp) / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: object | None = None
        _LIVE.add(self)

    # -- info ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    def log_text(self, tail: int | None = None) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-tail:] if tail else text

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        for k in ("REDIS_URL", "API_KEYS", "API_KEYS_FILE"):  # never inherit the caller's
            env.pop(k, None)
        env.update({
            "HOST": "127.0.0.1", "PORT": str(self.port), "DATA_DIR": str(self.data_dir),
            "MODELS": self.models, "LOG_JSON": "true", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
        })
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        for k, v in self.extra_env.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, wait: bool = True) -> "ServerProcess":
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.log_path, "ab")
        self._log_fh = fh
        self._proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=REPO_ROOT,
                                      env=self.environment(), stdin=subprocess.DEVNULL,
                                      stdout=fh, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (timeout_s or self.startup_timeout_s)
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self._proc is None or self._proc.poll() is not None:
                    code = None if self._proc is None else self._proc.returncode
                    raise RuntimeError(f"server exited with {code} before it was ready:\n"
                                       f"{self.log_text(4000)}")
                try:
                    if client.get(self.url + self.ready_path).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise TimeoutError(f"server not ready after {timeout_s or self.startup_timeout_s}s:\n"
                                       f"{self.log_text(4000)}")
                time.sleep(0.1)

    def signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        assert self._proc is not None, "server was never started"
        return self._proc.wait(timeout_s)

    def stop(self, timeout_s: float = 45.0) -> int | None:
        """SIGTERM and wait (uvicorn drains in-flight requests); SIGKILL after `timeout_s`.
        Returns the exit code: uvicorn re-raises the signal once it has drained and run the
        lifespan shutdown, so a clean stop is -SIGTERM (or 0)."""
        if self._proc is None:
            return None
        terminate(self._proc, timeout_s)
        return self._finish()

    def kill(self) -> int | None:
        if self._proc is None:
            return None
        kill(self._proc)
        return self._finish()

    def restart(self, wait: bool = True) -> "ServerProcess":
        self.stop()
        return self.start(wait=wait)

    def _finish(self) -> int | None:
        code = self._proc.returncode if self._proc is not None else None
        self._proc = None
        if self._log_fh is not None:
            self._log_fh.close()  # type: ignore[attr-defined]
            self._log_fh = None
        return code

    def close(self) -> None:
        self.stop(timeout_s=10.0)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _cleanup_all() -> None:  # last resort if a run is interrupted
    for server in list(_LIVE):
        server.kill()


try:  # fixtures, when imported under pytest
    import pytest

    @pytest.fixture(scope="module")
    def e2e_server(built_minilm: object) -> Iterator[ServerProcess]:
        with ServerProcess() as srv:
            yield srv

    @pytest.fixture
    def fresh_e2e_server(built_minilm: object) -> Iterator[ServerProcess]:
        with ServerProcess() as srv:
            yield srv
except ImportError:  # used outside pytest (locustfiles/run.py)
    pass

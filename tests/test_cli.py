"""The `semsearch` CLI against a real server process (tests/e2e_server.py), and graceful shutdown."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.e2e_server import REPO_ROOT, ServerProcess

pytestmark = pytest.mark.e2e

KEY = "cli-test-writer-key-0001"
TOPICS = ["rockets and orbital launches", "church sermons and faith", "stock market trading",
          "football matches and goals", "rain storms and floods"]


@pytest.fixture(scope="module")
def server(built_minilm) -> Iterator[ServerProcess]:
    with ServerProcess(env={"API_KEYS": f"{KEY}:write"}) as srv:
        yield srv


def cli(srv: ServerProcess, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SEMSEARCH_URL": srv.url, "SEMSEARCH_API_KEY": KEY}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def count(srv: ServerProcess, collection: str) -> int:
    r = httpx.get(f"{srv.url}/v1/collections/{collection}", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    return int(r.json()["count"])


def rows(n: int, start: int = 0) -> list[str]:
    return [json.dumps({"id": f"doc-{i}", "text": f"{TOPICS[i % 5]}, item {i}",
                        "metadata": {"topic": i % 5}, "year": 1990 + i % 30})
            for i in range(start, start + n)]


def test_ingest_jsonl_reports_rejected_rows_then_search(server: ServerProcess, tmp_path: Path) -> None:
    lines = rows(40)
    # line numbers are 1-based; replace some rows with bad ones
    lines[4] = '{"id": "bad-json", "text": '                               # line 5: invalid JSON
    lines[9] = json.dumps({"id": "no-text", "metadata": {}})              # line 10: no text
    lines[14] = json.dumps({"id": "m", "text": "x", "metadata": [1, 2]})  # line 15: metadata not object
    lines[19] = json.dumps({"id": "x" * 300, "text": "an id the server refuses"})  # line 20: server 422
    lines.insert(25, "")                                                  # blank lines are skipped
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join(lines) + "\n")

    p = cli(server, "ingest", str(f), "--collection", "cli_jsonl", "--create", "--batch-size", "8")
    assert p.returncode == 1, p.stderr  # rejected rows => non-zero exit
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert report["accepted"] == 36 and report["rejected"] == 4
    assert report["rejected_lines"] == [5, 10, 15, 20]
    assert "rejected line 5: invalid JSON" in p.stderr
    assert "rejected line 10: missing or empty 'text'" in p.stderr
    assert "rejected line 15: 'metadata' must be an object" in p.stderr
    assert "rejected line 20:" in p.stderr
    assert "%" in p.stderr  # the progress bar
    assert count(server, "cli_jsonl") == 36

    s = cli(server, "search", "rocket launch into orbit", "--collection", "cli_jsonl", "--top-k", "3")
    assert s.returncode == 0, s.stderr
    out = s.stdout.strip().splitlines()
    assert len(out) == 3 and all("rockets and orbital launches" in line for line in out)
    js = cli(server, "search", "a sermon", "--collection", "cli_jsonl", "--top-k", "2",
             "--filter", json.dumps({"topic": 1}), "--json")
    hits = json.loads(js.stdout)["results"]
    assert len(hits) == 2 and all(h["metadata"]["topic"] == 1 for h in hits)
    # extra top-level fields became metadata
    assert all(isinstance(h["metadata"]["year"], int) for h in hits)


def test_ingest_resumes_after_the_client_is_killed(server: ServerProcess, tmp_path: Path) -> None:
    f = tmp_path / "big.jsonl"
    f.write_text("\n".join(rows(200)) + "\n")
    state = tmp_path / "big.state.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    args = [sys.executable, "-m", "app.cli", "ingest", str(f), "--collection", "cli_resume", "--create",
            "--batch-size", "10", "--url", server.url, "--api-key", KEY, "--state-file", str(state)]
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # a crash of the client mid-file
    proc.wait()
    saved = json.loads(state.read_text())
    interrupted = saved["offset"] < f.stat().st_size
    assert saved["line"] > 0

    p = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert f"resuming big.jsonl at line {saved['line'] + 1}" in p.stderr
    if interrupted:
        assert report["accepted"] == 200 - saved["line"]
    assert count(server, "cli_resume") == 200  # deterministic ids: no duplicates, nothing lost

    # lines appended later are picked up by the next run, and only they are sent
    with open(f, "a") as fh:
        fh.write("\n".join(rows(15, start=200)) + "\n")
    p = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout.strip().splitlines()[-1])["accepted"] == 15
    assert count(server, "cli_resume") == 215


def test_ingest_csv_with_metadata_types_and_bad_rows(server: ServerProcess, tmp_path: Path) -> None:
    f = tmp_path / "docs.csv"
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "year", "lang", "zip"])
        w.writerow(["c1", "a satellite reached orbit\nafter a long delay", "2001", "en", "01234"])
        w.writerow(["c2", "the parish held a service", "1999", "en", ""])
        fh.write("c3,too few columns\n")                        # line 5 (the quoted newline makes row 1 two lines)
        w.writerow(["", "no id: derived from the line number", "2010", "fr", "9"])
    p = cli(server, "ingest", str(f), "--collection", "cli_csv", "--create", "--quiet")
    assert p.returncode == 1
    assert "rejected line 5: expected 5 columns, got 2" in p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["accepted"] == 3
    hits = json.loads(cli(server, "search", "space", "--collection", "cli_csv", "--json").stdout)["results"]
    by_id = {h["id"]: h for h in hits}
    assert set(by_id) == {"c1", "c2", "docs-6"}
    assert by_id["c1"]["metadata"] == {"year": 2001, "lang": "en", "zip": "01234"}
    assert "\n" in by_id["c1"]["text"]
    assert "zip" not in by_id["c2"]["metadata"]


def test_client_errors_are_clear(server: ServerProcess, tmp_path: Path) -> None:
    f = tmp_path / "one.jsonl"
    f.write_text(rows(1)[0] + "\n")
    p = cli(server, "ingest", str(f), "--collection", "does_not_exist", "--quiet")
    assert p.returncode == 1 and "collection not found" in p.stderr and "--create" in p.stderr
    p = cli(server, "search", "x", "--collection", "does_not_exist")
    assert p.returncode == 1 and "not_found" in p.stderr
    env_bad_key = subprocess.run([sys.executable, "-m", "app.cli", "ingest", str(f), "--collection", "cli_jsonl",
                                  "--url", server.url, "--api-key", "wrong-key-wrong-key", "--quiet"],
                                 cwd=REPO_ROOT, capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert env_bad_key.returncode == 1 and "not allowed" in env_bad_key.stderr
    assert "wrong-key" not in env_bad_key.stderr  # the key is never echoed
    p = subprocess.run([sys.executable, "-m", "app.cli", "ingest", str(f), "--collection", "x",
                        "--url", "http://127.0.0.1:9", "--retries", "0", "--quiet"],
                       cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert p.returncode == 1 and "server unreachable" in p.stderr


def test_entry_point_and_bench_command() -> None:
    from app.cli import build_parser

    parser = build_parser()
    for cmd in ("serve", "build-models", "ingest", "search", "bench"):
        assert cmd in parser.format_help()
    exe = Path(sys.executable).with_name("semsearch")
    if exe.exists():  # installed by `pip install -e .` (make setup)
        out = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "ingest" in out.stdout


# --------------------------------------------------------------------------- graceful shutdown

def test_sigterm_drains_in_flight_requests_and_commits_writes(server: ServerProcess) -> None:
    """Requests in flight when SIGTERM arrives complete with 200; the acknowledged upsert is
    there after a restart on the same data directory; the lifespan shutdown runs.

    "In flight" is made deterministic (not a race against inference speed on a busy machine):
    each request sends its headers and the first half of its body, the server is signalled, and
    only then does the client send the rest.  uvicorn must keep those connections and answer.
    Runs last in this module: it stops and restarts the module's server."""
    srv = server
    base = srv.url
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.put(f"{base}/v1/collections/drain", json={"index": {"type": "flat"}},
                     headers=auth).status_code in (200, 201)
    signalled = threading.Event()
    results: dict[str, tuple[int, float]] = {}
    clients = {name: httpx.Client(base_url=base, timeout=90, headers=auth)
               for name in ("embed", "similarity", "upsert")}
    for c in clients.values():  # open the keep-alive connections first
        assert c.get("/healthz").status_code == 200
    bodies = {
        "embed": ("/v1/embeddings", {"input": [f"in flight text {j}" for j in range(8)]}),
        "similarity": ("/v1/similarity", {"source": "orbit", "targets": ["rocket", "prayer"]}),
        "upsert": ("/v1/collections/drain/documents",
                   {"documents": [{"id": f"d{j}", "text": f"document number {j}"} for j in range(20)]}),
    }

    def send(name: str) -> None:
        path, body = bodies[name]
        raw = json.dumps(body).encode()

        def trickle() -> Iterator[bytes]:
            yield raw[: len(raw) // 2]
            signalled.wait(30)
            time.sleep(0.3)
            yield raw[len(raw) // 2:]

        r = clients[name].post(path, content=trickle(), headers={"Content-Type": "application/json"})
        results[name] = (r.status_code, time.monotonic())

    threads = [threading.Thread(target=send, args=(n,)) for n in bodies]
    for t in threads:
        t.start()
    time.sleep(0.5)  # headers and half of each body are with the server
    sigterm_at = time.monotonic()
    srv.signal(signal.SIGTERM)
    signalled.set()
    for t in threads:
        t.join(90)
    for c in clients.values():
        c.close()
    code = srv.wait(60)
    # uvicorn re-raises the signal after its graceful shutdown: killed by SIGTERM *after*
    # draining ("service stopped" is logged by the lifespan) is the clean outcome
    assert code in (0, -signal.SIGTERM), srv.log_text(3000)
    assert "service stopped" in srv.log_text()
    assert {k: v[0] for k, v in results.items()} == {"embed": 200, "similarity": 200, "upsert": 200}, \
        srv.log_text(3000)
    assert min(t for _, t in results.values()) > sigterm_at
    with pytest.raises(httpx.ConnectError):  # no new connections once shutting down
        httpx.get(f"{base}/healthz", timeout=2)

    srv.start()  # same port, same DATA_DIR
    assert count(srv, "drain") == 20
    assert count(srv, "cli_jsonl") == 36  # and everything written earlier in this module

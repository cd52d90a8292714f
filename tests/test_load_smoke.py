"""`make load` in miniature: locust's realistic mix against a real server + real Redis, started
and torn down by locustfiles/run.py; it must end with zero failed requests."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e_server import REPO_ROOT
from tests.redis_server import find_redis_binary

pytestmark = pytest.mark.e2e


def test_locust_mix_smoke_run_has_no_failures(tmp_path: Path, built_minilm) -> None:
    if not find_redis_binary():
        pytest.skip("redis-server not installed")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("SEMSEARCH_API_KEY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "locustfiles.run", "--users", "4", "--spawn-rate", "4",
         "--duration", "20s", "--seed-docs", "60", "--report-dir", str(tmp_path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASS: 0 failures" in proc.stdout
    with open(tmp_path / "mix_stats.csv", newline="") as fh:
        rows = {r["Name"]: r for r in csv.DictReader(fh)}
    assert int(rows["Aggregated"]["Request Count"]) >= 20
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    hit = set(rows)
    assert "/v1/collections/{name}/search" in hit or "/v1/similarity [search fallback]" in hit
    assert "/v1/embeddings" in hit
    assert (tmp_path / "mix.html").stat().st_size > 0
    for line in ("p50", "p95", "p99", "TOTAL"):
        assert line in proc.stdout

"""Durability: reopen, index snapshots (missing, corrupt, truncated, stale), replay of the
store's changes, and a writer process killed with SIGKILL mid-stream."""
from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from index import CollectionManager, DocumentIn, SnapshotPolicy
from index.collection import SNAPSHOT_FILE, Collection
from index.snapshot import read_snapshot

DIM = 16
REPO = Path(__file__).resolve().parents[1]
KINDS = {"flat": {"type": "flat"}, "hnsw": {"type": "hnsw", "m": 8, "ef_construction": 40},
         "ivf": {"type": "ivf", "nlist": 4, "nprobe": 2}}


def vecs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def fill(c: Collection, n: int, seed: int = 0, prefix: str = "d") -> np.ndarray:
    v = vecs(n, seed)
    c.upsert([DocumentIn(id=f"{prefix}{i}", text=str(i), vector=v[i], metadata={"i": i})
              for i in range(n)])
    return v


def snapshot_path(tmp_path: Path, name: str = "c") -> Path:
    return tmp_path / "collections" / name / SNAPSHOT_FILE


def results(c: Collection, q: np.ndarray, filter: dict | None = None
            ) -> list[list[tuple[str, float]]]:
    return [[(h.id, round(h.score, 4)) for h in row]
            for row in c.search(q, top_k=10, filter=filter)]


def same_answers(c: Collection, q: np.ndarray, before: dict) -> None:
    """Exact answers (flat, or any index through a small filter, which is scored exactly)
    are identical; approximate ones from a rebuilt HNSW/IVF overlap almost entirely."""
    everything = {"i": {"$exists": True}}
    assert results(c, q, everything) == before["exact"]
    now = results(c, q)
    if c.config.index.type == "flat":
        assert now == before["plain"]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(now, before["plain"])])
    assert overlap >= 0.8


def answers(c: Collection, q: np.ndarray) -> dict:
    return {"exact": results(c, q, {"i": {"$exists": True}}), "plain": results(c, q)}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("damage", ["none", "missing", "corrupt", "truncated", "garbage"])
def test_reopen_with_intact_or_damaged_snapshot(kind: str, damage: str, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    manager = CollectionManager(tmp_path)
    c, _ = manager.create("c", {"dim": DIM, "metric": "l2", "index": KINDS[kind]})
    v = fill(c, 400)
    c.delete(["d1", "d2"])
    c.upsert([DocumentIn(id="d3", text="replaced", vector=v[0],
                         metadata={"i": 3, "new": True})])
    q = vecs(5, 99)
    before, stats = answers(c, q), c.stats()
    manager.close_all()
    path = snapshot_path(tmp_path)
    assert path.exists()
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "corrupt":
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(flipped))
    elif damage == "truncated":
        path.write_bytes(data[: len(data) - 100])
    elif damage == "garbage":
        path.write_bytes(b"not a snapshot")
    with caplog.at_level(logging.INFO, logger="index.collection"):
        manager = CollectionManager(tmp_path)
    c = manager.get("c")
    rebuilt = "rebuilding the index from the document store" in caplog.text
    assert rebuilt == (damage != "none"), caplog.text
    same_answers(c, q, before)
    assert c.get_document("d3").metadata == {"i": 3, "new": True} and c.get(["d1", "d2"]) == []
    after = c.stats()
    for key in ("count", "ntotal", "write_version", "trained"):
        assert after[key] == stats[key], key
    if damage != "none":  # the rebuilt index is snapshotted again right away
        header, _ = read_snapshot(snapshot_path(tmp_path))
        assert header["seq"] == stats["write_version"]
    manager.close_all()


def test_changes_after_the_snapshot_are_replayed(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    manager = CollectionManager(tmp_path)
    c, _ = manager.create("c", {"dim": DIM, "index": KINDS["hnsw"]})
    v = fill(c, 300)
    assert c.snapshot_index()["seq"] == 300
    c.delete([f"d{i}" for i in range(50)])
    c.upsert([DocumentIn(id=f"d{i}", text="new", vector=v[i + 100], metadata={"i": i})
              for i in range(50, 60)])
    fill(c, 20, seed=5, prefix="e")
    version = c.write_version
    q = v[:60]
    before = answers(c, q)
    c.close(snapshot=False)  # like a crash: the snapshot on disk is at seq 300
    with caplog.at_level(logging.INFO, logger="index.collection"):
        manager = CollectionManager(tmp_path)
    c = manager.get("c")
    assert "loaded index snapshot at seq 300, replayed 90 changes" in caplog.text
    same_answers(c, q, before)
    assert c.write_version == version
    assert c.stats()["ntotal"] == c.count() == 270
    manager.close_all()


def test_a_stale_snapshot_whose_deletions_were_pruned_is_not_used(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manager = CollectionManager(tmp_path)
    c, _ = manager.create("c", {"dim": DIM})
    v = fill(c, 100)
    c.snapshot_index()
    old_snapshot = snapshot_path(tmp_path).read_bytes()
    c.delete(["d0", "d1"])
    c.snapshot_index()  # prunes the deletion records up to here
    manager.close_all()
    snapshot_path(tmp_path).write_bytes(old_snapshot)  # e.g. restored from an old backup
    with caplog.at_level(logging.WARNING, logger="index.collection"):
        manager = CollectionManager(tmp_path)
    assert "cannot be replayed" in caplog.text
    c = manager.get("c")
    assert {h.id for h in c.search(v[:2], top_k=3)[0] + c.search(v[:2], top_k=3)[1]} \
        .isdisjoint({"d0", "d1"})
    manager.close_all()


def test_snapshot_policy(tmp_path: Path) -> None:
    manager = CollectionManager(tmp_path, snapshot_policy=SnapshotPolicy(every_writes=50,
                                                                        every_seconds=3600))
    c, _ = manager.create("c", {"dim": DIM})
    fill(c, 30)
    assert not snapshot_path(tmp_path).exists() and c.stats()["snapshot_seq"] is None
    fill(c, 30, seed=1, prefix="e")
    assert c.stats()["snapshot_seq"] == 60 and snapshot_path(tmp_path).exists()
    assert not c.maybe_snapshot()
    c.snapshot_policy = SnapshotPolicy(every_writes=10**6, every_seconds=0)
    fill(c, 1, seed=2, prefix="f")  # time-based policy: snapshots after this write
    assert c.stats()["snapshot_seq"] == 61
    manager.close_all()


# ------------------------------------------------------------------------ kill -9
CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from index import CollectionManager, DocumentIn, SnapshotPolicy
    data_dir, batch, size, dim = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), 16
    manager = CollectionManager(data_dir, snapshot_policy=SnapshotPolicy(every_writes=150))
    c, _ = manager.create("crash", {"dim": dim, "index": {"type": "hnsw", "m": 8,
                                                          "ef_construction": 40}})
    print("READY", flush=True)
    while True:
        v = np.random.default_rng(batch).standard_normal((size + 5, dim))
        docs = [DocumentIn(id=f"b{batch}-{i}", text="x", vector=v[i],
                           metadata={"batch": batch}) for i in range(size)]
        if batch > 0:  # also replace 5 documents of the previous batch
            docs += [DocumentIn(id=f"b{batch - 1}-{i}", text="x", vector=v[size + i],
                                metadata={"batch": batch - 1, "rev": batch}) for i in range(5)]
        c.upsert(docs)
        print(f"ACK {batch}", flush=True)
        batch += 1
""")
BATCH = 40


def run_and_kill(data_dir: Path, first_batch: int, rng: random.Random) -> set[int]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir), str(first_batch),
                             str(BATCH)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    acked: set[int] = set()
    kill_after = rng.randint(6, 14)
    try:
        for line in proc.stdout:
            if line.startswith("ACK"):
                acked.add(int(line.split()[1]))
                if len(acked) >= kill_after:
                    break
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the next batch is being written
        for line in proc.stdout:  # anything printed before the kill was acknowledged too
            if line.startswith("ACK"):
                acked.add(int(line.split()[1]))
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= kill_after
    return acked


def verify(data_dir: Path, acked: set[int]) -> int:
    """Every acknowledged batch is complete and searchable; no batch is partial.  Returns
    the number of batches present."""
    manager = CollectionManager(data_dir)
    c = manager.get("crash")
    present = []
    for batch in range(max(acked) + 3):
        docs = c.get([f"b{batch}-{i}" for i in range(BATCH)], include_vector=True)
        assert len(docs) in (0, BATCH), f"batch {batch} is partial: {len(docs)}"
        if batch in acked:
            assert len(docs) == BATCH, f"acknowledged batch {batch} lost"
        if not docs:
            continue
        present.append(batch)
        # The replacement of batch-1's documents is visible iff this batch is.
        if batch > 0:
            revs = [d.metadata.get("rev") for d in c.get([f"b{batch - 1}-{i}"
                                                         for i in range(5)])]
            assert revs == [batch] * 5
        probe = docs[7]
        hit = c.search(probe.vector, top_k=1, filter={"batch": batch})[0][0]
        assert hit.id == probe.id and hit.score > 0.999
        assert c.search(probe.vector, top_k=1)[0][0].id == probe.id
    assert present == list(range(len(present))), present
    assert c.count() == c.stats()["ntotal"] == BATCH * len(present)
    manager.close_all()
    return len(present)


def test_sigkill_mid_stream_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    rng = random.Random(1234)
    acked = run_and_kill(tmp_path, 0, rng)
    present = verify(tmp_path, acked)
    # Restart and crash again: recovery, continued writes, second crash.
    acked |= run_and_kill(tmp_path, present, rng)
    verify(tmp_path, acked)
    shutil.rmtree(tmp_path / "collections")

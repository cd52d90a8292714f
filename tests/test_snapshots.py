"""Collection snapshots (archives) and restore: API round trip, consistency under writes,
corrupt/truncated/hostile archives, and the offline CLI restore."""
from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from index.snapshot import read_snapshot

REPO = Path(__file__).resolve().parents[1]
BASE = "/v1/collections"


def _docs(prefix: str, n: int) -> list[dict]:
    topics = ["cats and dogs", "stock markets", "space rockets", "football matches", "cooking pasta"]
    return [{"id": f"{prefix}{i}", "text": f"{topics[i % 5]} story number {i}",
             "metadata": {"i": i, "topic": topics[i % 5]}} for i in range(n)]


def _all_docs(client, name: str) -> dict[str, dict]:
    out, cursor = {}, None
    while True:
        params = {"limit": 100, "with_vectors": True, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"{BASE}/{name}/documents", params=params).json()
        out.update({d["id"]: d for d in page["documents"]})
        cursor = page["next_cursor"]
        if not cursor:
            return out


def _data_dir(client) -> Path:
    return Path(client.app.state.svc.settings.data_dir)


@pytest.fixture(scope="module")
def snap(client):
    assert client.put(f"{BASE}/snap", json={}).status_code in (200, 201)
    r = client.post(f"{BASE}/snap/documents", json={"documents": _docs("d", 30)})
    assert r.status_code == 200, r.text
    return "snap"


def test_round_trip(client, snap):
    query = {"query": "rocket launch into space", "top_k": 5, "filter": {"i": {"$lt": 25}}}
    before_hits = client.post(f"{BASE}/{snap}/search", json=query).json()["results"]
    before_docs = _all_docs(client, snap)

    r = client.post(f"{BASE}/{snap}/snapshot")
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["count"] == 30 and info["seq"] >= 30 and info["snapshot"].endswith(".tar")
    listed = client.get(f"{BASE}/{snap}/snapshots").json()["snapshots"]
    assert info in listed
    assert (_data_dir(client) / "snapshots" / snap / info["snapshot"]).is_file()

    # modify: replace, delete, add
    client.post(f"{BASE}/{snap}/documents", json={"documents": [
        {"id": "d2", "text": "a rocket launch into space", "metadata": {"i": 2}},
        {"id": "new", "text": "rocket launch into space today", "metadata": {"i": 1}}]})
    client.post(f"{BASE}/{snap}/documents/delete", json={"ids": ["d7", "d12"]})
    changed = client.post(f"{BASE}/{snap}/search", json=query).json()["results"]
    assert changed != before_hits

    r = client.post(f"{BASE}/{snap}/restore", json={"snapshot": info["snapshot"]})
    assert r.status_code == 200, r.text
    assert r.json()["count"] == 30
    assert _all_docs(client, snap) == before_docs          # texts, metadata, vectors
    # same query again: the restored data answers, not a cached result of the modified state
    assert client.post(f"{BASE}/{snap}/search", json=query).json()["results"] == before_hits
    # and the restored collection keeps working
    assert client.post(f"{BASE}/{snap}/documents", json={"documents": [{"id": "after", "text": "x y"}]}).status_code == 200
    assert client.get(f"{BASE}/{snap}").json()["count"] == 31


def test_snapshot_is_consistent_while_writes_continue(client):
    name = "snapbusy"
    assert client.put(f"{BASE}/{name}", json={"dim": 8}).status_code == 201
    rng = np.random.default_rng(1)
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            docs = [{"id": f"w{i}-{j}", "vector": rng.standard_normal(8).tolist()} for j in range(20)]
            r = client.post(f"{BASE}/{name}/documents", json={"documents": docs})
            if r.status_code != 200:
                errors.append(r.text)
            if i % 3 == 2:
                client.post(f"{BASE}/{name}/documents/delete", json={"ids": [f"w{i - 1}-{j}" for j in range(5)]})
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        infos = []
        for _ in range(3):
            r = client.post(f"{BASE}/{name}/snapshot")
            assert r.status_code == 201, r.text
            infos.append(r.json())
            # searches go on meanwhile
            assert client.post(f"{BASE}/{name}/search", json={"vector": [1.0] * 8}).status_code == 200
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]
    for info in infos:
        path = _data_dir(client) / "snapshots" / name / info["snapshot"]
        with tarfile.open(path) as tar, tempfile_dir() as tmp:
            assert tar.getnames() == ["manifest.json", "config.json", "documents.sqlite3", "index.snapshot"]
            tar.extractall(tmp, filter="data")
            manifest = json.loads((tmp / "manifest.json").read_text())
            db = sqlite3.connect(tmp / "documents.sqlite3")
            count = db.execute("SELECT count(*) FROM documents").fetchone()[0]
            last_seq = int(db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0])
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            db.close()
            header, _ = read_snapshot(tmp / "index.snapshot")
            assert manifest["count"] == count == info["count"]
            assert manifest["seq"] == last_seq == header["seq"] == info["seq"]  # one point in time


class tempfile_dir:
    def __enter__(self) -> Path:
        import tempfile
        self.path = Path(tempfile.mkdtemp())
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _copy_as(src: Path, name: str) -> Path:
    dst = src.with_name(name)
    shutil.copyfile(src, dst)
    return dst


def _rewrite(src: Path, dst: Path, edit) -> None:
    """Copy archive ``src`` to ``dst``, passing (name, bytes) of each member through ``edit``."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin.getmembers():
            data = tin.extractfile(member).read()
            for name, payload in edit(member.name, data):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tout.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def archive(client, snap) -> Path:
    r = client.post(f"{BASE}/{snap}/snapshot")
    assert r.status_code == 201
    return _data_dir(client) / "snapshots" / snap / r.json()["snapshot"]


def _restore_fails(client, snap, archive: Path, name: str, kind: str = "snapshot_corrupt") -> str:
    before = client.get(f"{BASE}/{snap}").json()
    r = client.post(f"{BASE}/{snap}/restore", json={"snapshot": name})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == kind
    after = client.get(f"{BASE}/{snap}").json()
    assert after["uid"] == before["uid"] and after["count"] == before["count"]  # untouched
    leftovers = [p.name for p in (_data_dir(client) / "collections").iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers
    return err["message"]


def test_corrupt_archive_is_rejected_with_checksum_error(client, snap, archive):
    bad = _copy_as(archive, "20000101T000000.000001Z.tar")
    data = bytearray(bad.read_bytes())
    offset = data.find(b"SQLite format 3")
    assert offset > 0
    data[offset + 5000] ^= 0xFF  # one flipped byte inside the document store
    bad.write_bytes(bytes(data))
    msg = _restore_fails(client, snap, archive, bad.name)
    assert "checksum mismatch for documents.sqlite3" in msg


def test_truncated_archive_is_rejected(client, snap, archive):
    bad = _copy_as(archive, "20000101T000000.000002Z.tar")
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    msg = _restore_fails(client, snap, archive, bad.name)
    assert "truncated" in msg or "not a readable archive" in msg or "checksum" in msg


def test_archive_with_unexpected_member_is_rejected(client, snap, archive):
    bad = archive.with_name("20000101T000000.000003Z.tar")
    _rewrite(archive, bad, lambda name, data: [(name, data)] + (
        [("../../escaped.txt", b"x")] if name == "config.json" else []))
    msg = _restore_fails(client, snap, archive, bad.name)
    assert "unexpected member" in msg
    assert not list(_data_dir(client).parent.rglob("escaped.txt"))


def test_archive_with_forged_manifest_is_rejected(client, snap, archive):
    bad = archive.with_name("20000101T000000.000004Z.tar")

    def edit(name, data):
        if name == "documents.sqlite3":
            data = data + b"\0" * 1024  # changed content, manifest left as it was
        return [(name, data)]
    _rewrite(archive, bad, edit)
    assert "checksum mismatch" in _restore_fails(client, snap, archive, bad.name)
    garbage = archive.with_name("20000101T000000.000005Z.tar")
    garbage.write_bytes(b"not a tar at all" * 100)
    _restore_fails(client, snap, archive, garbage.name)
    listed = {s["snapshot"]: s for s in client.get(f"{BASE}/{snap}/snapshots").json()["snapshots"]}
    assert listed[garbage.name]["seq"] == -1  # listed, marked unreadable


def test_unknown_and_invalid_snapshot_names(client, snap):
    r = client.post(f"{BASE}/{snap}/restore", json={"snapshot": "19990101T000000.000000Z.tar"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "snapshot_not_found"
    for bad in ["../x.tar", "/etc/passwd", "20240101T000000.000000Z.tar/..", ""]:
        assert client.post(f"{BASE}/{snap}/restore", json={"snapshot": bad}).status_code == 422
    assert client.post(f"{BASE}/nosuch/snapshot").status_code == 404
    assert client.get(f"{BASE}/nosuch/snapshots").json()["snapshots"] == []


def test_delete_snapshot_and_restore_a_deleted_collection(client):
    name = "snapgone"
    assert client.put(f"{BASE}/{name}", json={}).status_code == 201
    client.post(f"{BASE}/{name}/documents", json={"documents": _docs("g", 5)})
    first = client.post(f"{BASE}/{name}/snapshot").json()["snapshot"]
    second = client.post(f"{BASE}/{name}/snapshot").json()["snapshot"]
    assert first != second
    assert client.delete(f"{BASE}/{name}/snapshots/{second}").status_code == 204
    assert client.delete(f"{BASE}/{name}/snapshots/{second}").status_code == 404
    assert [s["snapshot"] for s in client.get(f"{BASE}/{name}/snapshots").json()["snapshots"]] == [first]
    assert client.delete(f"{BASE}/{name}").status_code == 200
    r = client.post(f"{BASE}/{name}/restore", json={"snapshot": first})
    assert r.status_code == 200, r.text
    assert client.get(f"{BASE}/{name}").json()["count"] == 5
    hits = client.post(f"{BASE}/{name}/search", json={"query": "stock markets", "top_k": 1}).json()["results"]
    assert hits[0]["id"] == "g1"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", "restore", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_restore_offline(client, snap, archive, tmp_path):
    from index import CollectionManager

    target = tmp_path / "data"
    done = _cli(str(archive), "--collection", "copy", "--data-dir", str(target))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["collection"] == "copy"
    manager = CollectionManager(target)
    try:
        col = manager.get("copy")
        assert col.count() == client.get(f"{BASE}/{snap}").json()["count"]
        vec = np.asarray(client.get(f"{BASE}/{snap}/documents/d3", params={"with_vector": True}).json()["vector"])
        assert col.search(vec, top_k=1)[0][0].id == "d3"
    finally:
        manager.close_all()
    # a second restore replaces it
    assert _cli(str(archive), "--collection", "copy", "--data-dir", str(target)).returncode == 0


def test_cli_restore_refuses_open_collection_and_bad_archives(client, snap, archive, tmp_path):
    live = _cli(str(archive), "--collection", snap, "--data-dir", str(_data_dir(client)))
    assert live.returncode == 1 and "open in a running server" in live.stderr
    bad = tmp_path / "bad.tar"
    data = bytearray(archive.read_bytes())
    data[-20000] ^= 0xFF
    bad.write_bytes(bytes(data))
    out = _cli(str(bad), "--collection", "x", "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 1 and "checksum mismatch" in out.stderr
    assert _cli(str(archive), "--collection", "../x", "--data-dir", str(tmp_path / "d")).returncode == 1
    assert _cli(str(tmp_path / "missing.tar"), "--collection", "x").returncode == 2

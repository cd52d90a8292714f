"""Storage faults under a real server.

* Disk full: DATA_DIR on a 3 MB tmpfs, filled up during upserts -> 507, nothing acknowledged
  is lost, reads go on, writes recover when space returns, the store passes SQLite's
  integrity check and survives a restart.
* Read-only: DATA_DIR on a loop-mounted ext4 (errors=remount-ro) that the kernel turns
  read-only under the server's open files (an ext4 error, as after a failing disk) -> 503 for
  writes, reads go on; after stop + fsck + mount + start, everything acknowledged is there.
  (``mount -o remount,ro`` cannot be used: Linux refuses it while files are open for writing.)

Needs root (mount); skipped where mounting is not allowed."""
from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

from tests.e2e_server import ServerProcess

pytestmark = pytest.mark.e2e
DIM = 64


def _mount(size: str) -> Path:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = Path(tempfile.mkdtemp(prefix="semsearch-tmpfs-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return mnt


@pytest.fixture
def small_disk(built_minilm) -> Iterator[tuple[ServerProcess, Path]]:
    mnt = _mount("3m")
    srv = ServerProcess(data_dir=mnt / "data")
    try:
        srv.start()
        yield srv, mnt
    finally:
        srv.close()
        subprocess.run(["umount", str(mnt)], capture_output=True)
        mnt.rmdir()


def _batch(start: int, n: int, rng: np.random.Generator) -> list[dict]:
    return [{"id": f"doc-{start + i}", "text": "filler text " * 10,
             "vector": rng.standard_normal(DIM).round(4).tolist(), "metadata": {"n": start + i}}
            for i in range(n)]


def _all_ids(c: httpx.Client, name: str) -> set[str]:
    ids, cursor = set(), None
    while True:
        page = c.get(f"/v1/collections/{name}/documents",
                     params={"limit": 1000, **({"cursor": cursor} if cursor else {})}).json()
        ids |= {d["id"] for d in page["documents"]}
        cursor = page["next_cursor"]
        if not cursor:
            return ids


def _fill(path: Path, leave_bytes: int) -> None:
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    with open(path / "filler.bin", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave_bytes))


def test_disk_full_during_upserts(small_disk):
    srv, mnt = small_disk
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.put("/v1/collections/full", json={"dim": DIM}).status_code == 201
        _fill(mnt, leave_bytes=400_000)
        acked: set[str] = set()
        failure = None
        for i in range(400):
            docs = _batch(i * 40, 40, rng)
            r = c.post("/v1/collections/full/documents", json={"documents": docs})
            if r.status_code == 200:
                acked |= {d["id"] for d in docs}
                continue
            failure = r
            break
        assert failure is not None, "the disk never filled up"
        assert failure.status_code == 507, failure.text
        err = failure.json()["error"]
        assert err["type"] == "storage_error" and "disk is full" in err["message"]
        assert len(acked) > 0
        # further writes keep failing cleanly; reads keep working; nothing acknowledged is lost
        r = c.post("/v1/collections/full/documents", json={"documents": _batch(10**6, 40, rng)})
        assert r.status_code == 507, r.text
        q = {"vector": [1.0] * DIM, "top_k": 5}
        assert c.post("/v1/collections/full/search", json=q).status_code == 200
        assert c.get("/v1/collections/full").json()["count"] == len(acked)
        assert _all_ids(c, "full") == acked
        assert c.get("/readyz").status_code == 200

        (mnt / "filler.bin").unlink()      # space returns
        more = _batch(2 * 10**6, 40, rng)
        r = c.post("/v1/collections/full/documents", json={"documents": more})
        assert r.status_code == 200, r.text
        acked |= {d["id"] for d in more}
        assert c.get("/v1/collections/full").json()["count"] == len(acked)

    srv.stop()
    db = sqlite3.connect(srv.data_dir / "collections" / "full" / "documents.sqlite3")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*) FROM documents").fetchone()[0] == len(acked)
    finally:
        db.close()
    srv.start()
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        assert _all_ids(c, "full") == acked
        hits = c.post("/v1/collections/full/search", json={"vector": more[0]["vector"], "top_k": 1}).json()
        assert hits["results"][0]["id"] == more[0]["id"]


@pytest.fixture
def ext4_disk(built_minilm) -> Iterator[tuple[ServerProcess, Path, Path]]:
    """DATA_DIR on a loop-mounted ext4 (errors=remount-ro): the kernel can be made to turn it
    read-only under the server's open files, as it does after an I/O error."""
    if os.geteuid() != 0:
        pytest.skip("loop-mounting a file system needs root")
    work = Path(tempfile.mkdtemp(prefix="semsearch-ext4-"))
    image, mnt = work / "fs.img", work / "mnt"
    mnt.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(32 * 1024 * 1024)
    made = subprocess.run(["mkfs.ext4", "-q", str(image)], capture_output=True, text=True)
    mounted = made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop,errors=remount-ro", str(image), str(mnt)], capture_output=True).returncode == 0
    if not mounted:
        shutil.rmtree(work, ignore_errors=True)
        pytest.skip(f"cannot loop-mount ext4 here: {made.stderr.strip()}")
    srv = ServerProcess(data_dir=mnt / "data")
    try:
        srv.start()
        yield srv, mnt, image
    finally:
        srv.close()
        subprocess.run(["umount", str(mnt)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def _make_read_only(mnt: Path) -> None:
    source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True,
                            text=True, check=True).stdout.strip()
    trigger = Path("/sys/fs/ext4") / Path(source).name / "trigger_fs_error"
    if not trigger.exists():
        pytest.skip("this kernel has no ext4 trigger_fs_error")
    trigger.write_text("1\n")   # ext4 error -> errors=remount-ro: read-only at once, files open or not
    deadline = time.monotonic() + 5
    while True:
        try:
            (mnt / f"probe-{time.monotonic_ns()}").touch()
        except OSError as exc:
            assert exc.errno == errno.EROFS, exc
            return
        assert time.monotonic() < deadline, "the file system did not turn read-only"
        time.sleep(0.05)


def test_read_only_data_directory(ext4_disk):
    srv, mnt, image = ext4_disk
    rng = np.random.default_rng(1)
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.put("/v1/collections/ro", json={"dim": DIM}).status_code == 201
        first = _batch(0, 50, rng)
        assert c.post("/v1/collections/ro/documents", json={"documents": first}).status_code == 200
        _make_read_only(mnt)
        r = c.post("/v1/collections/ro/documents", json={"documents": _batch(100, 10, rng)})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["type"] == "storage_error"
        assert c.post("/v1/collections/ro/documents/delete", json={"ids": ["doc-1"]}).status_code == 503
        assert c.put("/v1/collections/other", json={"dim": DIM}).status_code == 503
        assert c.post("/v1/collections/ro/snapshot").status_code == 503
        # reads go on
        r = c.post("/v1/collections/ro/search", json={"vector": first[3]["vector"], "top_k": 1})
        assert r.status_code == 200 and r.json()["results"][0]["id"] == "doc-3"
        assert c.get("/v1/collections/ro").json()["count"] == 50
    # recovery as an operator does it: stop, repair the file system, start
    srv.stop()
    assert subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0
    assert subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True).returncode in (0, 1)
    subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(mnt)], check=True)
    db = sqlite3.connect(srv.data_dir / "collections" / "ro" / "documents.sqlite3")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    srv.start()
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        assert _all_ids(c, "ro") == {d["id"] for d in first}
        r = c.post("/v1/collections/ro/documents", json={"documents": _batch(200, 10, rng)})
        assert r.status_code == 200, r.text
        assert c.get("/v1/collections/ro").json()["count"] == 60
        assert c.post("/v1/collections/ro/snapshot").status_code == 201

"""Collection archives: a consistent, checksummed copy of one collection in one tar file, and
the restore that puts such a copy in place of a live collection.

An archive (``<snapshots dir>/<YYYYmmddTHHMMSS.ffffffZ>.tar``) holds, in this order:

``manifest.json``      format, collection name, uid, config, seq, document count, created_at
                       and the sha256 + size of every other member
``config.json``        the collection's config record
``documents.sqlite3``  the document store, copied with SQLite's online backup API
``index.snapshot``     the FAISS index at the same seq (itself checksummed, see snapshot.py)

Making one: the store backup and the index snapshot are taken under the collection's writer
mutex (writes wait, searches go on), into a hidden staging directory next to the archive;
the tar is written to a hidden temporary name, fsynced and renamed into place.

Restoring one: every member is checked against the manifest (unexpected members, missing
members, sizes and sha256) while it is extracted into a hidden staging directory inside the
collections root, then the collection gets a NEW uid (so no cached result of its earlier life
can be served) and the staging directory replaces the live one with one atomic
``renameat2(RENAME_EXCHANGE)`` (two renames where the kernel lacks it).  Nothing is taken
from the archive's member names: they are only compared with the fixed list below.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import IndexServiceError, InvalidArgument, StorageError, storage_error_from
from .snapshot import SnapshotCorrupt, fsync_dir, read_snapshot, write_snapshot

ARCHIVE_FORMAT = 1
MANIFEST = "manifest.json"
CONFIG_FILE = "config.json"
STORE_FILE = "documents.sqlite3"
SNAPSHOT_FILE = "index.snapshot"
LOCK_FILE = "collection.lock"
DATA_MEMBERS = (CONFIG_FILE, STORE_FILE, SNAPSHOT_FILE)
ARCHIVE_NAME = re.compile(r"\d{8}T\d{6}\.\d{6}Z\.tar")
_CHUNK = 1 << 20


class ArchiveCorrupt(IndexServiceError):
    """The archive fails its checks (checksum, size, members, manifest)."""

    type = "snapshot_corrupt"
    http_status = 400


class ArchiveNotFound(IndexServiceError):
    type = "snapshot_not_found"
    http_status = 404


@dataclass(frozen=True)
class ArchiveInfo:
    snapshot: str          # the file name: what a client passes back to restore
    path: Path
    bytes: int
    created_at: str
    seq: int
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot, "bytes": self.bytes, "created_at": self.created_at,
                "seq": self.seq, "count": self.count}


def check_archive_name(snapshot: Any) -> str:
    """A snapshot is named by its file name only (``20240501T120000.000000Z.tar``): never a
    path, so nothing a client sends can point outside the collection's snapshot directory."""
    if not isinstance(snapshot, str) or not ARCHIVE_NAME.fullmatch(snapshot):
        raise InvalidArgument("snapshot must be a file name from the snapshot list, e.g. "
                              "'20240501T120000.000000Z.tar'", {"snapshot": repr(snapshot)[:80]})
    return snapshot


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


# ---------------------------------------------------------------------------------- create
def create_archive(collection: Any, dest_dir: Path) -> ArchiveInfo:
    """Write an archive of ``collection`` (an :class:`index.Collection`) into ``dest_dir``."""
    dest_dir = Path(dest_dir)
    now = datetime.now(timezone.utc)
    name = now.strftime("%Y%m%dT%H%M%S.%fZ") + ".tar"
    staging = dest_dir / f".staging-{uuid.uuid4().hex}"
    tmp_tar = dest_dir / f".{name}.tmp"
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        while (dest_dir / name).exists():  # two snapshots in the same microsecond
            now = datetime.fromtimestamp(now.timestamp() + 1e-6, timezone.utc)
            name = now.strftime("%Y%m%dT%H%M%S.%fZ") + ".tar"
        staging.mkdir()
        state = collection.export_files(staging)
        shutil.copyfile(Path(collection.directory) / CONFIG_FILE, staging / CONFIG_FILE)
        files = {}
        for member in DATA_MEMBERS:
            digest, size = _sha256_file(staging / member)
            files[member] = {"sha256": digest, "bytes": size}
        manifest = {"format": ARCHIVE_FORMAT, "collection": collection.name,
                    "uid": collection.uid, "config": collection.config.to_dict(),
                    "seq": int(state["seq"]), "count": int(state["count"]),
                    "created_at": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
                    "files": files}
        raw = json.dumps(manifest, indent=2, sort_keys=True).encode()
        with open(tmp_tar, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mtime, info.mode = len(raw), int(now.timestamp()), 0o644
                tar.addfile(info, io.BytesIO(raw))
                for member in DATA_MEMBERS:
                    info = tar.gettarinfo(str(staging / member), arcname=member)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    with open(staging / member, "rb") as src:
                        tar.addfile(info, src)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_tar, dest_dir / name)
        fsync_dir(dest_dir)
    except OSError as exc:
        tmp_tar.unlink(missing_ok=True)
        raise storage_error_from(exc, f"write snapshot of collection {collection.name!r}") from exc
    except BaseException:
        tmp_tar.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ArchiveInfo(name, dest_dir / name, (dest_dir / name).stat().st_size,
                       manifest["created_at"], manifest["seq"], manifest["count"])


# ---------------------------------------------------------------------------------- read
def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of an archive (first member), without verifying the data members."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile() \
                    or first.size > 1 << 20:
                raise ArchiveCorrupt("archive does not start with its manifest",
                                     {"snapshot": path.name})
            fh = tar.extractfile(first)
            assert fh is not None
            manifest = json.loads(fh.read())
    except FileNotFoundError:
        raise ArchiveNotFound(f"snapshot {path.name!r} does not exist",
                              {"snapshot": path.name}) from None
    except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
        raise ArchiveCorrupt(f"snapshot {path.name!r} is not a readable archive: {exc}",
                             {"snapshot": path.name}) from None
    _check_manifest(manifest, path.name)
    return manifest


def _check_manifest(manifest: Any, shown: str) -> None:
    ok = (isinstance(manifest, dict) and manifest.get("format") == ARCHIVE_FORMAT
          and isinstance(manifest.get("files"), dict)
          and set(manifest["files"]) == set(DATA_MEMBERS)
          and all(isinstance(v, dict) and isinstance(v.get("sha256"), str)
                  and isinstance(v.get("bytes"), int) for v in manifest["files"].values())
          and isinstance(manifest.get("seq"), int) and isinstance(manifest.get("count"), int))
    if not ok:
        raise ArchiveCorrupt(f"snapshot {shown!r} has an invalid manifest", {"snapshot": shown})


def list_archives(dest_dir: Path) -> list[ArchiveInfo]:
    """The archives in ``dest_dir``, oldest first; unreadable ones are listed with seq -1."""
    out: list[ArchiveInfo] = []
    try:
        entries = sorted(p for p in Path(dest_dir).iterdir() if ARCHIVE_NAME.fullmatch(p.name))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise storage_error_from(exc, "list snapshots") from exc
    for path in entries:
        try:
            size = path.stat().st_size
            m = read_manifest(path)
            out.append(ArchiveInfo(path.name, path, size, str(m.get("created_at", "")),
                                   m["seq"], m["count"]))
        except ArchiveCorrupt:
            out.append(ArchiveInfo(path.name, path, size, "", -1, -1))
        except (ArchiveNotFound, FileNotFoundError):  # deleted meanwhile
            continue
    return out


# ---------------------------------------------------------------------------------- restore
def extract_verified(archive: Path, staging: Path) -> dict[str, Any]:
    """Extract ``archive`` into the (new, empty) directory ``staging``, verifying every
    member against the manifest.  Raises ArchiveCorrupt / ArchiveNotFound / StorageError."""
    archive = Path(archive)
    shown = archive.name
    manifest = read_manifest(archive)
    expected = manifest["files"]
    seen: set[str] = set()
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for info in tar:
                if info.name == MANIFEST and not seen:
                    continue
                if info.name not in expected or info.name in seen or not info.isfile():
                    raise ArchiveCorrupt(f"snapshot {shown!r} has an unexpected member "
                                         f"{info.name[:100]!r}", {"snapshot": shown})
                seen.add(info.name)
                src = tar.extractfile(info)
                assert src is not None
                h = hashlib.sha256()
                size = 0
                with open(staging / info.name, "xb") as dst:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        size += len(chunk)
                        dst.write(chunk)
                    dst.flush()
                    os.fsync(dst.fileno())
                want = expected[info.name]
                if size != want["bytes"] or h.hexdigest() != want["sha256"]:
                    raise ArchiveCorrupt(f"snapshot {shown!r}: checksum mismatch for "
                                         f"{info.name} (the archive is corrupt or truncated)",
                                         {"snapshot": shown, "member": info.name})
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveCorrupt(f"snapshot {shown!r} is not a readable archive: {exc}",
                             {"snapshot": shown}) from None
    except OSError as exc:
        raise storage_error_from(exc, f"extract snapshot {shown!r}") from exc
    missing = sorted(set(expected) - seen)
    if missing:
        raise ArchiveCorrupt(f"snapshot {shown!r} is truncated: {', '.join(missing)} missing",
                             {"snapshot": shown, "missing": missing})
    return manifest


def _rewrite_identity(staging: Path, name: str, uid: str, config_format: int) -> None:
    """Give the staged collection its target name and a new uid (config + index snapshot)."""
    record = json.loads((staging / CONFIG_FILE).read_text(encoding="utf-8"))
    if not isinstance(record, dict) or record.get("format") != config_format \
            or not isinstance(record.get("config"), dict):
        raise ArchiveCorrupt("the archived collection config is not readable")
    record.update(name=name, uid=uid)
    tmp = staging / f".{CONFIG_FILE}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, staging / CONFIG_FILE)
    try:
        header, blobs = read_snapshot(staging / SNAPSHOT_FILE)
        header["uid"] = uid
        write_snapshot(staging / SNAPSHOT_FILE, header, blobs)
    except SnapshotCorrupt:  # verified above, so only if hand-made: the index is rebuilt
        (staging / SNAPSHOT_FILE).unlink(missing_ok=True)
    fsync_dir(staging)


def stage_archive(archive: Path, root: Path, name: str, *, config_format: int = 1) -> Path:
    """Verify and extract ``archive`` into a hidden staging directory under ``root`` (the
    collections directory: same file system, so it can be renamed into place), renamed for
    collection ``name`` with a new uid.  Returns the staging directory."""
    staging = Path(root) / f".tmp-{uuid.uuid4().hex}"
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise storage_error_from(exc, "prepare restore") from exc
    try:
        extract_verified(archive, staging)
        _rewrite_identity(staging, name, uuid.uuid4().hex, config_format)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_into_place(staging: Path, target: Path) -> Path | None:
    """Put ``staging`` at ``target``.  If ``target`` existed, the old directory ends up at a
    hidden name (returned, for the caller to delete or to swap back) - never a moment without
    a collection directory where the kernel supports RENAME_EXCHANGE."""
    root = target.parent
    try:
        if not target.exists():
            os.rename(staging, target)
            fsync_dir(root)
            return None
        if _exchange(staging, target):
            old = root / f".trash-{uuid.uuid4().hex}"
            os.rename(staging, old)  # staging now holds the old collection
        else:
            old = root / f".trash-{uuid.uuid4().hex}"
            os.rename(target, old)
            os.rename(staging, target)
        fsync_dir(root)
        return old
    except OSError as exc:
        raise storage_error_from(exc, f"restore into {target.name!r}") from exc


def restore_offline(archive: Path, data_dir: Path, name: str, *, config_format: int = 1) -> dict[str, Any]:
    """Restore ``archive`` as collection ``name`` under ``data_dir`` with no server running
    (the CLI).  Refuses when a process has the collection open (its lock file is held)."""
    root = Path(data_dir) / "collections"
    target = root / name
    lock_fd = None
    if (target / LOCK_FILE).exists():
        lock_fd = os.open(target / LOCK_FILE, os.O_RDWR)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise StorageError(f"collection {name!r} is open in a running server: restore it "
                               "through the HTTP API, or stop the server first",
                               {"collection": name}, 409) from None
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = stage_archive(archive, root, name, config_format=config_format)
        record = json.loads((staging / CONFIG_FILE).read_text(encoding="utf-8"))
        old = swap_into_place(staging, target)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return {"collection": name, "uid": record["uid"], "replaced": old is not None}

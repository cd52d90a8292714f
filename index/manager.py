"""CollectionManager: the named collections under ``<data_dir>/collections/<name>/``.

A name is validated (``^[A-Za-z0-9_-]{1,64}$``) before anything touches the file system, so it
can never be a path (no ``/``, ``..``, NUL).  A collection directory appears atomically: it is
prepared under a hidden temporary name (names cannot start with ``.``) and renamed into place;
deletion renames it to a hidden trash name before removing it, so a crash never leaves a
half-created or half-deleted collection visible.  Leftovers are cleaned up on start.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from .archive import (ArchiveInfo, check_archive_name, create_archive, list_archives,
                      stage_archive, swap_into_place)
from .collection import Collection
from .config import CollectionConfig
from .errors import (CollectionConflict, CollectionNotFound, IndexServiceError, InvalidName,
                     StorageError, storage_error_from)
from .snapshot import fsync_dir
from .types import FilterLimits, SnapshotPolicy

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
CONFIG_FILE = "config.json"
CONFIG_FORMAT = 1


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        shown = repr(name)[:80]
        raise InvalidName(f"invalid collection name {shown}: use 1-64 letters, digits, "
                          "'-' or '_'", {"name": shown})
    return name


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class CollectionManager:
    def __init__(self, data_dir: Path, *, snapshot_policy: SnapshotPolicy | None = None,
                 filter_limits: FilterLimits | None = None,
                 exact_subset_max: int | None = None) -> None:
        self.root = Path(data_dir) / "collections"
        self.snapshots_root = Path(data_dir) / "snapshots"  # archives: <name>/<timestamp>.tar
        self._options: dict[str, Any] = {"snapshot_policy": snapshot_policy,
                                         "filter_limits": filter_limits,
                                         "exact_subset_max": exact_subset_max}
        self._lock = threading.RLock()
        self._collections: dict[str, Collection] = {}
        self.failed: dict[str, str] = {}  # collections on disk that could not be opened
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error_from(exc, "create the data directory") from exc
        self._open_existing()

    def _path(self, name: str) -> Path:
        path = self.root / validate_name(name)
        if path.parent != self.root:  # defence in depth: the pattern already forbids this
            raise InvalidName(f"invalid collection name {name!r}")
        return path

    def _open_existing(self) -> None:
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith("."):  # unfinished create or delete
                shutil.rmtree(entry, ignore_errors=True)
                continue
            if not entry.is_dir() or not NAME_PATTERN.fullmatch(entry.name):
                log.warning("ignoring unexpected entry %s in %s", entry.name, self.root)
                continue
            try:
                self._collections[entry.name] = self._open(entry)
            except (IndexServiceError, OSError, ValueError, KeyError) as exc:
                log.error("collection %s cannot be opened: %s", entry.name, exc)
                self.failed[entry.name] = str(exc)

    def _open(self, path: Path) -> Collection:
        data = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        if data.get("format") != CONFIG_FORMAT or data.get("name") != path.name:
            raise ValueError(f"{path / CONFIG_FILE} is not a collection config")
        return Collection(path, path.name, CollectionConfig.from_dict(data["config"]),
                          uid=data["uid"], created_at=data["created_at"], **self._options)

    def create(self, name: str, config: CollectionConfig | Mapping[str, Any]
               ) -> tuple[Collection, bool]:
        """Create a collection; returns (collection, created).  The same config again is
        idempotent (created=False); a different one raises CollectionConflict."""
        path = self._path(name)
        if not isinstance(config, CollectionConfig):
            config = CollectionConfig.from_dict(config)
        with self._lock:
            existing = self._collections.get(name)
            if existing is not None:
                if existing.config == config:
                    return existing, False
                raise CollectionConflict(
                    f"collection {name!r} already exists with a different configuration",
                    {"name": name, "existing": existing.config.to_dict(),
                     "requested": config.to_dict()})
            if name in self.failed or path.exists():
                raise StorageError(f"collection {name!r} exists on disk but cannot be opened",
                                   {"name": name, "reason": self.failed.get(name, "")}, 503)
            record = {"format": CONFIG_FORMAT, "name": name, "uid": uuid.uuid4().hex,
                      "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "config": config.to_dict()}
            staging = self.root / f".tmp-{uuid.uuid4().hex}"
            try:
                staging.mkdir()
                _write_json_atomic(staging / CONFIG_FILE, record)
                os.rename(staging, path)
                fsync_dir(self.root)
            except OSError as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise storage_error_from(exc, f"create collection {name!r}") from exc
            collection = Collection(path, name, config, uid=record["uid"],
                                    created_at=record["created_at"], **self._options)
            self._collections[name] = collection
            return collection, True

    def get(self, name: str) -> Collection:
        validate_name(name)
        with self._lock:
            collection = self._collections.get(name)
        if collection is None:
            raise CollectionNotFound(f"collection {name!r} does not exist", {"name": name})
        return collection

    def delete(self, name: str) -> None:
        """Close the collection and remove its files."""
        path = self._path(name)
        with self._lock:
            collection = self._collections.pop(name, None)
            if collection is None and name not in self.failed:
                raise CollectionNotFound(f"collection {name!r} does not exist", {"name": name})
            self.failed.pop(name, None)
            if collection is not None:
                collection.close(snapshot=False)
            trash = self.root / f".trash-{uuid.uuid4().hex}"
            try:
                os.rename(path, trash)
                fsync_dir(self.root)
            except FileNotFoundError:
                return
            except OSError as exc:
                raise storage_error_from(exc, f"delete collection {name!r}") from exc
        shutil.rmtree(trash, ignore_errors=True)

    def list(self) -> list[Collection]:
        with self._lock:
            return [self._collections[n] for n in sorted(self._collections)]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._collections)

    # ------------------------------------------------------------------ archives
    def snapshot_dir(self, name: str) -> Path:
        return self.snapshots_root / validate_name(name)

    def archive(self, name: str) -> ArchiveInfo:
        """Write a consistent archive of a live collection (see index/archive.py)."""
        return create_archive(self.get(name), self.snapshot_dir(name))

    def archives(self, name: str) -> list[ArchiveInfo]:
        return list_archives(self.snapshot_dir(name))

    def archive_path(self, name: str, snapshot: str) -> Path:
        return self.snapshot_dir(name) / check_archive_name(snapshot)

    def restore(self, name: str, archive: Path) -> Collection:
        """Replace collection ``name`` (or create it) with an archive's contents.  The archive
        is verified and staged first, so a bad one leaves the live collection untouched; the
        restored collection gets a new uid.  In-flight requests on the old one finish first
        (closing waits for them); requests that already hold it then see it closed."""
        path = self._path(name)
        staging: Path | None = stage_archive(archive, self.root, name, config_format=CONFIG_FORMAT)
        trash: Path | None = None
        try:
            with self._lock:
                old = self._collections.pop(name, None)
                if old is not None:
                    old.close(snapshot=False)
                assert staging is not None
                trash = swap_into_place(staging, path)
                staging = None
                try:
                    collection = self._open(path)
                except Exception:
                    log.exception("restored collection %s cannot be opened; putting back the "
                                  "previous one", name)
                    if trash is not None:
                        trash = swap_into_place(trash, path)  # trash: the failed copy now
                        if old is not None:
                            self._collections[name] = self._open(path)
                    else:
                        trash = self.root / f".trash-{uuid.uuid4().hex}"
                        os.rename(path, trash)
                    raise
                self._collections[name] = collection
                self.failed.pop(name, None)
                return collection
        finally:
            for leftover in (staging, trash):
                if leftover is not None:
                    shutil.rmtree(leftover, ignore_errors=True)

    def maybe_snapshot_all(self) -> int:
        """Apply every collection's snapshot policy (for a periodic task); returns how many
        snapshots were written.  Failures are logged and skipped."""
        written = 0
        for collection in self.list():
            try:
                written += collection.maybe_snapshot()
            except IndexServiceError as exc:
                log.warning("snapshot of %s failed: %s", collection.name, exc.message)
        return written

    def close_all(self) -> None:
        with self._lock:
            for name in sorted(self._collections):
                try:
                    self._collections[name].close()
                except Exception:  # keep closing the others
                    log.exception("closing collection %s failed", name)
            self._collections.clear()

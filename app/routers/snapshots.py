"""Collection snapshots (consistent archives: store + index + config + checksums) and restore.

Archives live under ``DATA_DIR/snapshots/<collection>/<timestamp>.tar``; a client names one by
its file name from the list, never by a path.  See index/archive.py for the format.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from index import validate_name
from index.archive import ArchiveNotFound
from index.errors import storage_error_from

from ..auth import require_scope
from ..deps import state
from ..services.collections import run_sync

router = APIRouter(prefix="/v1/collections", tags=["snapshots"],
                   dependencies=[Depends(require_scope("read"))])
WRITE = [Depends(require_scope("write"))]
NamePath = Path(..., description="letters, digits, '-' and '_' (1-64 characters)", max_length=64,
                pattern=r"^[A-Za-z0-9_-]{1,64}$")
SNAPSHOT_PATTERN = r"^\d{8}T\d{6}\.\d{6}Z\.tar$"


class SnapshotOut(BaseModel):
    snapshot: str = Field(description="file name; pass it to restore")
    bytes: int
    created_at: str
    seq: int = Field(description="write version the archive holds (-1: unreadable archive)")
    count: int = Field(description="documents in the archive (-1: unreadable archive)")


class SnapshotList(BaseModel):
    collection: str
    snapshots: list[SnapshotOut]


class RestoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"snapshot": "20240501T120000.000000Z.tar"}]})
    snapshot: str = Field(..., pattern=SNAPSHOT_PATTERN, max_length=64,
                          description="a file name from GET .../snapshots (never a path)")


class RestoreOut(BaseModel):
    restored: str
    snapshot: str
    count: int
    write_version: int
    uid: str


@router.post("/{name}/snapshot", response_model=SnapshotOut, status_code=201, dependencies=WRITE,
             summary="Write a consistent archive of the collection (it keeps serving meanwhile)")
async def create_snapshot(name: str = NamePath, svc: Any = Depends(state)) -> SnapshotOut:
    validate_name(name)
    info = await run_sync(svc.collections.manager.archive, name)
    return SnapshotOut(**info.to_dict())


@router.get("/{name}/snapshots", response_model=SnapshotList,
            summary="List the collection's archives, oldest first")
async def list_snapshots(name: str = NamePath, svc: Any = Depends(state)) -> SnapshotList:
    validate_name(name)
    found = await run_sync(svc.collections.manager.archives, name)
    return SnapshotList(collection=name, snapshots=[SnapshotOut(**a.to_dict()) for a in found])


@router.post("/{name}/restore", response_model=RestoreOut, dependencies=WRITE,
             summary="Replace the collection (or re-create it) from one of its archives")
async def restore_snapshot(body: RestoreRequest, name: str = NamePath,
                           svc: Any = Depends(state)) -> RestoreOut:
    validate_name(name)
    manager = svc.collections.manager
    path = manager.archive_path(name, body.snapshot)
    col = await run_sync(manager.restore, name, path)
    return RestoreOut(restored=name, snapshot=body.snapshot, count=await run_sync(col.count),
                      write_version=col.write_version, uid=col.uid)


@router.delete("/{name}/snapshots/{snapshot}", status_code=204, dependencies=WRITE,
               summary="Delete one archive", response_class=Response)
async def delete_snapshot(name: str = NamePath,
                          snapshot: str = Path(..., pattern=SNAPSHOT_PATTERN, max_length=64),
                          svc: Any = Depends(state)) -> Response:
    validate_name(name)
    path = svc.collections.manager.archive_path(name, snapshot)
    try:
        await run_sync(path.unlink)
    except FileNotFoundError:
        raise ArchiveNotFound(f"snapshot {snapshot!r} does not exist",
                              {"collection": name, "snapshot": snapshot}) from None
    except OSError as exc:
        raise storage_error_from(exc, "delete snapshot") from exc
    return Response(status_code=204)

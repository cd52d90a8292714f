"""Collections, documents, search and recommend (resource model after Qdrant's HTTP API)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import JSONResponse

from index import validate_name

from ..auth import require_scope
from ..deps import state
from ..errors import ApiError
from ..schemas.collections import (BatchSearchRequest, BatchSearchResponse, CreateCollection,
                                   DeleteRequest, DeleteResponse, DocumentOut, DocumentPageOut,
                                   RecommendRequest, SearchRequest, SearchResponse, UpsertRequest,
                                   UpsertResponse)
from ..services.collections import run_sync

router = APIRouter(prefix="/v1/collections", tags=["collections"], dependencies=[Depends(require_scope("read"))])
WRITE = [Depends(require_scope("write"))]  # on top of the router-wide read scope

NamePath = Path(..., description="letters, digits, '-' and '_' (1-64 characters)", max_length=64,
                pattern=r"^[A-Za-z0-9_-]{1,64}$")


def _collection(svc: Any, name: str) -> Any:
    validate_name(name)
    return svc.collections.get(name)


@router.get("", summary="List collections")
async def list_collections(svc: Any = Depends(state)) -> dict[str, Any]:
    cols = svc.collections.manager.list()
    return {"collections": [await svc.collections.describe(c) for c in cols]}


@router.put("/{name}", dependencies=WRITE, responses={201: {"description": "Created"}}, summary="Create a collection (idempotent with the same config, 409 otherwise)")
async def create_collection(body: CreateCollection, response: Response, name: str = NamePath,
                            svc: Any = Depends(state)) -> dict[str, Any]:
    validate_name(name)
    col, created = await svc.collections.create(name, body)
    response.status_code = 201 if created else 200
    return {"created": created, **(await svc.collections.describe(col))}


@router.get("/{name}", summary="Collection config, counts and index state")
async def get_collection(name: str = NamePath, svc: Any = Depends(state)) -> dict[str, Any]:
    return await svc.collections.describe(_collection(svc, name))


@router.delete("/{name}", dependencies=WRITE, summary="Delete a collection and its files")
async def delete_collection(name: str = NamePath, svc: Any = Depends(state)) -> dict[str, Any]:
    validate_name(name)
    await svc.collections.delete(name)
    return {"deleted": name}


@router.post("/{name}/documents", response_model=UpsertResponse, dependencies=WRITE,
             summary="Upsert documents (acknowledged only after the store committed them)")
async def upsert_documents(body: UpsertRequest, name: str = NamePath,
                           svc: Any = Depends(state)) -> UpsertResponse:
    col = _collection(svc, name)
    res = await svc.collections.upsert(col, body.documents)
    return UpsertResponse(ids=res.ids, count=len(res.ids), write_version=res.write_version)


@router.get("/{name}/documents", response_model=DocumentPageOut,
            summary="Page through every document (next_cursor is null on the last page)")
async def list_documents(name: str = NamePath, cursor: str | None = Query(None, max_length=512),
                         limit: int = Query(100, ge=1, le=1000), with_vectors: bool = False,
                         svc: Any = Depends(state)) -> DocumentPageOut:
    col = _collection(svc, name)
    page = await run_sync(col.list_documents, cursor, limit, include_vector=with_vectors)
    return JSONResponse({"documents": [_doc(d).model_dump(exclude_none=True) for d in page.documents],
                         "next_cursor": page.next_cursor})


@router.get("/{name}/documents/{doc_id:path}", response_model=DocumentOut, response_model_exclude_none=True,
            summary="Get one document")
async def get_document(doc_id: str = Path(..., max_length=256), name: str = NamePath,
                       with_vector: bool = False, svc: Any = Depends(state)) -> DocumentOut:
    col = _collection(svc, name)
    return _doc(await run_sync(col.get_document, doc_id, include_vector=with_vector))


@router.delete("/{name}/documents/{doc_id:path}", response_model=DeleteResponse, dependencies=WRITE,
                summary="Delete one document")
async def delete_document(doc_id: str = Path(..., max_length=256), name: str = NamePath,
                          svc: Any = Depends(state)) -> DeleteResponse:
    col = _collection(svc, name)
    res = await run_sync(col.delete, [doc_id])
    if not res.deleted:
        raise ApiError(404, "document_not_found", f"document {doc_id!r} not found in {name!r}",
                       {"collection": name, "id": doc_id})
    return DeleteResponse(deleted=len(res.deleted), deleted_ids=res.deleted, write_version=res.write_version)


@router.post("/{name}/documents/delete", response_model=DeleteResponse, dependencies=WRITE,
             summary="Delete documents by ids or by filter")
async def delete_documents(body: DeleteRequest, name: str = NamePath,
                           svc: Any = Depends(state)) -> DeleteResponse:
    col = _collection(svc, name)
    if body.ids is not None:
        res = await run_sync(col.delete, body.ids)
    else:
        res = await run_sync(col.delete_by_filter, body.filter)
    return DeleteResponse(deleted=len(res.deleted), deleted_ids=res.deleted[:10000],
                          not_found=res.not_found, write_version=res.write_version)


@router.post("/{name}/search", response_model=SearchResponse, response_model_exclude_none=True,
             summary="Semantic search with a text or a vector; filters apply inside the search")
async def search(body: SearchRequest, name: str = NamePath, svc: Any = Depends(state)) -> SearchResponse:
    col = _collection(svc, name)
    (hits,) = await svc.collections.search(col, [body])  # JSON bytes, possibly straight from the cache
    return _json(b'{"results":' + hits + b"}")  # type: ignore[return-value]


@router.post("/{name}/search/batch", response_model=BatchSearchResponse, response_model_exclude_none=True,
             summary="Many searches in one request")
async def search_batch(body: BatchSearchRequest, name: str = NamePath,
                       svc: Any = Depends(state)) -> BatchSearchResponse:
    if len(body.searches) > svc.settings.max_texts_per_request:
        raise ApiError(413, "too_many_searches",
                       f"{len(body.searches)} searches; at most {svc.settings.max_texts_per_request}")
    col = _collection(svc, name)
    out = await svc.collections.search(col, body.searches)
    return _json(b'{"batches":[' + b",".join(b'{"results":' + h + b"}" for h in out)  # type: ignore[return-value]
                 + b"]}")


@router.post("/{name}/recommend", response_model=SearchResponse, response_model_exclude_none=True,
             summary="More like these documents (and unlike those)")
async def recommend(body: RecommendRequest, name: str = NamePath, svc: Any = Depends(state)) -> SearchResponse:
    col = _collection(svc, name)
    return SearchResponse(results=await svc.collections.recommend(col, body))


def _doc(d: Any) -> DocumentOut:
    vec = d.vector.tolist() if getattr(d, "vector", None) is not None else None
    return DocumentOut(id=d.id, text=d.text, metadata=d.metadata, vector=vec)


def _json(body: bytes) -> Response:
    """A body already serialised as the declared response model would be (search hits)."""
    return Response(content=body, media_type="application/json")

"""POST /v1/cluster: topic clusters over texts or a collection (large inputs run as jobs)."""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ..auth import require_scope
from ..deps import state
from ..errors import ApiError
from ..schemas.cluster import ClusterRequest, ClusterResponse
from ..services.clustering import ClusterParams, cluster, load_collection
from ..services.jobs import JobContext, get_jobs

router = APIRouter(prefix="/v1", tags=["clustering"], dependencies=[Depends(require_scope("read"))])

SYNC_MAX_TEXTS = 1000   # more texts than this run as a background job unless background=false


def _params(req: ClusterRequest) -> ClusterParams:
    return ClusterParams(algorithm=req.algorithm, k=req.k, k_min=req.k_min, k_max=req.k_max,
                         distance_threshold=req.distance_threshold, threshold=req.threshold,
                         min_community_size=req.min_community_size,
                         min_cluster_size=req.min_cluster_size, min_samples=req.min_samples,
                         seed=req.seed, n_keywords=req.n_keywords,
                         n_representatives=req.n_representatives)


def _response(outcome: Any, texts: list[str], ids: list[str] | None) -> dict[str, Any]:
    def ref(i: int) -> int | str:
        return ids[i] if ids is not None else i
    clusters = [{"id": cid, "label": c.label, "keywords": c.keywords, "size": len(c.members),
                 "members": [ref(i) for i in c.members],
                 "representatives": [texts[i] for i in c.representatives]}
                for cid, c in enumerate(outcome.clusters)]
    return {"clusters": clusters, "outliers": [ref(i) for i in outcome.outliers],
            "silhouette": outcome.silhouette}


async def _cluster_texts(svc: Any, req: ClusterRequest, texts: list[str], cut: list[bool],
                         ctx: JobContext | None = None) -> dict[str, Any]:
    p = _params(req)
    if p.k is not None and p.k > len(texts):  # fail before paying for the encoding
        raise ApiError(422, "k_too_large", f"k={p.k} is larger than the number of texts "
                       f"({len(texts)})", {"k": p.k, "count": len(texts)})
    emb = await svc.embedding.embed(req.model, texts, cut)
    if ctx is not None:
        ctx.progress(0.4)
    progress = (lambda f: ctx.progress(0.4 + 0.6 * f)) if ctx is not None else (lambda f: None)
    outcome = await asyncio.to_thread(cluster, emb.vectors, texts, p, progress)
    return _response(outcome, texts, None)


async def _cluster_collection(svc: Any, req: ClusterRequest, ctx: JobContext) -> dict[str, Any]:
    col = svc.collections.get(req.collection)
    ids, texts, vectors = await asyncio.to_thread(load_collection, col, req.filter, ctx.progress)
    if len(ids) < 2:
        raise ApiError(422, "too_few_documents",
                       f"{len(ids)} document(s) of collection {req.collection!r} match; "
                       "clustering needs at least 2", {"count": len(ids)})
    progress = lambda f: ctx.progress(0.3 + 0.7 * f)  # noqa: E731
    outcome = await asyncio.to_thread(cluster, vectors, texts, _params(req), progress)
    return _response(outcome, texts, ids)


def _accepted(job: Any) -> JSONResponse:
    return JSONResponse({"job_id": job.id, "status": job.status}, status_code=202,
                        headers={"Location": f"/v1/jobs/{job.id}"})


@router.post("/cluster", response_model=ClusterResponse,
             responses={202: {"description": "accepted as a background job: {job_id, status}"}},
             summary="Cluster texts or a collection into labelled topics")
async def cluster_endpoint(req: ClusterRequest, svc: Any = Depends(state)) -> Any:
    jobs = get_jobs(svc)
    if req.collection is not None:
        if getattr(svc, "collections", None) is None:
            raise ApiError(503, "collections_unavailable", "collections are not enabled")
        svc.collections.get(req.collection)  # 404 / 400 now, not inside the job
        if req.background is False:
            raise ApiError(422, "background_required",
                           "clustering a collection always runs as a background job")
        # 400 for a malformed or too large filter now (the MAX_FILTER_* settings), not inside the job
        svc.collections.check_filter(req.filter)
        return _accepted(jobs.submit("cluster", lambda ctx: _cluster_collection(svc, req, ctx)))
    texts, cut = svc.embedding.check_texts(req.texts or [], "texts",
                                           limit=max(svc.settings.max_texts_per_request, 1))
    if len(texts) < 2:
        raise ApiError(422, "too_few_texts", f"clustering needs at least 2 texts (got {len(texts)})",
                       {"count": len(texts)})
    if req.k is not None and req.k > len(texts):
        raise ApiError(422, "k_too_large", f"k={req.k} is larger than the number of texts "
                       f"({len(texts)})", {"k": req.k, "count": len(texts)})
    svc.embedding.encoder(req.model)  # unknown model: 404 now
    background = req.background if req.background is not None else len(texts) > SYNC_MAX_TEXTS
    if background:
        return _accepted(jobs.submit("cluster", lambda ctx: _cluster_texts(svc, req, texts, cut, ctx)))
    return await _cluster_texts(svc, req, texts, cut)

"""Classification: zero-shot, trained few-shot classifiers (resources), kNN over a collection."""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Path, Response
from fastapi.responses import JSONResponse

from ..auth import require_scope
from ..deps import state
from ..errors import ApiError
from ..schemas.classify import (ClassifyRequest, ClassifyResponse, KnnRequest, KnnResponse,
                                PredictRequest, PredictResponse, TrainRequest)
from ..services import classify as svc_classify
from ..services.classifiers import get_store, validate_name
from ..services.jobs import get_jobs

router = APIRouter(prefix="/v1", tags=["classification"], dependencies=[Depends(require_scope("read"))])
WRITE = [Depends(require_scope("write"))]

NamePath = Path(..., max_length=64, description="letters, digits, '-' and '_' (1-64 characters)")


@router.post("/classify", response_model=ClassifyResponse, response_model_exclude_none=True,
             summary="Zero-shot classification against label names or descriptions")
async def classify(req: ClassifyRequest, svc: Any = Depends(state)) -> dict[str, Any]:
    texts, cut = svc.embedding.check_texts(req.texts, "texts")
    results = await svc_classify.zero_shot(svc, texts, cut, req.labels, req.model, req.multi_label,
                                           req.temperature, req.threshold)
    return {"results": results}


# ---------------------------------------------------------------------------- classifiers
@router.get("/classifiers", summary="List trained classifiers")
async def list_classifiers(svc: Any = Depends(state)) -> dict[str, Any]:
    metas = await asyncio.to_thread(get_store(svc).list)
    return {"classifiers": [svc_classify.describe(m) for m in metas]}


@router.put("/classifiers/{name}", dependencies=WRITE,
            responses={201: {"description": "trained and stored (new)"},
                       202: {"description": "training as a background job: {job_id, status} "
                             "(always with \"finetune\": true)"}},
            summary="Train (or retrain) a classifier from labelled examples; returns CV figures")
async def train(req: TrainRequest, response: Response, name: str = NamePath,
                svc: Any = Depends(state)) -> Any:
    validate_name(name)
    plan = svc_classify.plan_training(svc, req)
    background = plan.finetune is not None or (
        req.background if req.background is not None
        else len(plan.texts) > svc_classify.SYNC_MAX_EXAMPLES)
    if background:
        job = get_jobs(svc).submit("train_classifier",
                                   lambda ctx: svc_classify.train_classifier(svc, name, plan, ctx))
        return JSONResponse({"job_id": job.id, "status": job.status}, status_code=202,
                            headers={"Location": f"/v1/jobs/{job.id}"})
    out = await svc_classify.train_classifier(svc, name, plan)
    response.status_code = 201 if out.get("created") else 200
    return out


@router.get("/classifiers/{name}", summary="A classifier's labels, training figures and version")
async def get_classifier(name: str = NamePath, svc: Any = Depends(state)) -> dict[str, Any]:
    validate_name(name)
    return svc_classify.describe(await asyncio.to_thread(get_store(svc).meta, name))


@router.delete("/classifiers/{name}", dependencies=WRITE, summary="Delete a classifier")
async def delete_classifier(name: str = NamePath, svc: Any = Depends(state)) -> dict[str, Any]:
    validate_name(name)
    await asyncio.to_thread(get_store(svc).delete, name)
    return {"deleted": name}


@router.post("/classifiers/{name}/predict", response_model=PredictResponse,
             summary="Predict labels with a trained classifier (results in input order)")
async def predict(req: PredictRequest, name: str = NamePath,
                  svc: Any = Depends(state)) -> dict[str, Any]:
    validate_name(name)
    texts, cut = svc.embedding.check_texts(req.texts, "texts")
    return {"predictions": await svc_classify.predict(svc, name, texts, cut)}


# ---------------------------------------------------------------------------- kNN
@router.post("/collections/{name}/classify", response_model=KnnResponse,
             summary="kNN classification: distance-weighted vote of the nearest labelled documents")
async def knn_classify(req: KnnRequest, name: str = NamePath,
                       svc: Any = Depends(state)) -> dict[str, Any]:
    if getattr(svc, "collections", None) is None:
        raise ApiError(503, "collections_unavailable", "collections are not enabled")
    col = svc.collections.get(name)                       # 400 bad name, 404 unknown
    if req.k > svc.settings.max_top_k:
        raise ApiError(422, "k_too_large", f"k={req.k} exceeds the limit {svc.settings.max_top_k}",
                       {"k": req.k, "limit": svc.settings.max_top_k})
    texts, cut = svc.embedding.check_texts(req.texts, "texts")
    model = col.config.model
    if req.model is not None and model is not None and svc.embedding.encoder(req.model).name != model:
        raise ApiError(422, "model_mismatch", f"collection {name!r} holds {model} embeddings; "
                       f"texts cannot be compared with {req.model} embeddings",
                       {"collection_model": model, "model": req.model})
    model = model or req.model
    if model is None:
        raise ApiError(422, "model_required", f"collection {name!r} has no encoder; give `model`")
    has_label = {req.label_field: {"$exists": True}}
    flt = {"$and": [req.filter, has_label]} if req.filter else has_label
    probe = await asyncio.to_thread(col.search, _any_vector(col), 1, flt, None, False, False)
    if not probe[0]:
        raise ApiError(422, "no_labelled_documents",
                       f"no document of collection {name!r}{' matching the filter' if req.filter else ''} "
                       f"has the label field {req.label_field!r}", {"label_field": req.label_field})
    emb = await svc.embedding.embed(model, texts, cut)
    if emb.vectors.shape[1] != col.config.dim:
        raise ApiError(422, "dimension_mismatch", f"model {model} gives {emb.vectors.shape[1]} "
                       f"dimensions; collection {name!r} holds {col.config.dim}")
    hits = await asyncio.to_thread(col.search, emb.vectors, req.k, flt, None, False, True)
    return {"results": [svc_classify.knn_vote(h, req.label_field, col.config.metric) for h in hits]}


def _any_vector(col: Any) -> Any:
    import numpy as np
    v = np.zeros((1, col.config.dim), dtype=np.float32)
    v[0, 0] = 1.0
    return v

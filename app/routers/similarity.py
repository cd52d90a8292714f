from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends

from ..auth import require_scope
from ..deps import state
from ..errors import ApiError
from ..schemas.similarity import Pair, PairsRequest, PairsResponse, SimilarityRequest, SimilarityResponse
from ..services.similarity import mine_pairs

router = APIRouter(prefix="/v1", tags=["similarity"], dependencies=[Depends(require_scope("read"))])


@router.post("/similarity", response_model=SimilarityResponse, response_model_exclude_none=True,
             summary="Cosine similarity: one source against many targets, or a texts_a x texts_b matrix")
async def similarity(req: SimilarityRequest, svc: Any = Depends(state)) -> SimilarityResponse:
    emb = svc.embedding
    if req.source is not None:
        first, cut_a = emb.check_texts([req.source], "source")
        second, cut_b = emb.check_texts(req.targets or [], "targets")
    else:
        first, cut_a = emb.check_texts(req.texts_a or [], "texts_a")
        second, cut_b = emb.check_texts(req.texts_b or [], "texts_b")
    limit = svc.settings.max_texts_per_request
    if len(first) + len(second) > limit:  # the limit is per request, not per list
        raise ApiError(413, "too_many_texts", f"{len(first) + len(second)} texts in one request; "
                       f"at most {limit}", {"count": len(first) + len(second), "limit": limit})
    out = await emb.embed(req.model, first + second, cut_a + cut_b)
    a, b = out.vectors[: len(first)], out.vectors[len(first):]
    sims = np.clip(a @ b.T, -1.0, 1.0)
    truncated = [i for i, t in enumerate(out.truncated) if t]
    if req.source is not None:
        return SimilarityResponse(model=out.model, scores=[round(float(x), 6) for x in sims[0]],
                                  truncated=truncated)
    return SimilarityResponse(model=out.model, matrix=np.round(sims, 6).tolist(), truncated=truncated)


@router.post("/similarity/pairs", response_model=PairsResponse,
             summary="Paraphrase mining: the most similar pairs in a list (near-duplicate detection)")
async def pairs(req: PairsRequest, svc: Any = Depends(state)) -> PairsResponse:
    texts, cut = svc.embedding.check_texts(req.texts, "texts", limit=svc.settings.max_pairs_texts)
    out = await svc.embedding.embed(req.model, texts, cut)
    found = mine_pairs(out.vectors, req.threshold, req.top_k)
    return PairsResponse(model=out.model, pairs=[Pair(i=i, j=j, score=round(s, 6)) for i, j, s in found])

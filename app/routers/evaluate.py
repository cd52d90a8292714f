"""POST /v1/evaluate: score an encoder on the caller's own query -> document pairs."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from models.evaluate import pairs_search_space, retrieval_metrics

from ..auth import require_scope
from ..deps import state
from ..errors import ApiError

router = APIRouter(prefix="/v1", tags=["evaluate"], dependencies=[Depends(require_scope("read"))])

MAX_PAIRS = 5000


class EvalPair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str
    document: str


class EvaluateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "medical", "pairs": [{"query": "heart attack", "document": "Myocardial infarction"},
                                       {"query": "high blood sugar", "document": "Hyperglycemia"}]}]})
    model: str | None = None
    pairs: list[EvalPair] = Field(..., min_length=1)


class EvaluateResponse(BaseModel):
    model: str
    queries: int
    documents: int
    recall_at_1: float
    recall_at_10: float
    mrr: float


@router.post("/evaluate", response_model=EvaluateResponse,
             summary="recall@1, recall@10 and MRR of an encoder on your own query -> document pairs")
async def evaluate(req: EvaluateRequest, svc: Any = Depends(state)) -> EvaluateResponse:
    if len(req.pairs) > MAX_PAIRS:
        raise ApiError(413, "too_many_pairs", f"{len(req.pairs)} pairs; at most {MAX_PAIRS} per request",
                       {"limit": MAX_PAIRS})
    if req.model == "auto":
        raise ApiError(400, "auto_not_supported", "evaluate one named encoder at a time")
    # Every distinct document is the search space; a query's relevant document is its pair's.
    docs, relevant = pairs_search_space([p.document for p in req.pairs])
    queries = [p.query for p in req.pairs]
    limit = max(svc.settings.max_texts_per_request, MAX_PAIRS)
    q_texts, q_cut = svc.embedding.check_texts(queries, "pairs[].query", limit=limit)
    d_texts, d_cut = svc.embedding.check_texts(docs, "pairs[].document", limit=limit)
    qv = await svc.embedding.embed(req.model, q_texts, q_cut)
    dv = await svc.embedding.embed(req.model, d_texts, d_cut)
    m = retrieval_metrics(qv.vectors, dv.vectors, relevant)
    return EvaluateResponse(model=qv.model, queries=len(queries), documents=len(docs),
                            recall_at_1=round(m["recall@1"], 4), recall_at_10=round(m["recall@10"], 4),
                            mrr=round(m["mrr"], 4))

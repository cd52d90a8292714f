from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends

from ..auth import require_scope
from ..deps import state
from ..errors import ApiError
from ..schemas.embeddings import EmbeddingItem, EmbeddingsRequest, EmbeddingsResponse, Usage

router = APIRouter(prefix="/v1", tags=["embeddings"], dependencies=[Depends(require_scope("read"))])


@router.post("/embeddings", response_model=EmbeddingsResponse, response_model_exclude_none=True,
             summary="Embed texts (OpenAI-compatible request and response)")
async def create_embeddings(req: EmbeddingsRequest, svc: Any = Depends(state)) -> EmbeddingsResponse:
    raw = [req.input] if isinstance(req.input, str) else list(req.input)
    if raw and not all(isinstance(x, str) for x in raw):
        raise ApiError(422, "unsupported_input",
                       "input must be a string or a list of strings; token-id arrays are not supported")
    texts, cut = svc.embedding.check_texts(raw, "input")
    dim = svc.embedding.dimension(req.model)
    if req.dimensions is not None and req.dimensions != dim:
        raise ApiError(422, "unsupported_dimensions",
                       f"model {req.model or svc.pool.default_name} produces {dim} dimensions; "
                       f"got dimensions={req.dimensions}")
    emb = await svc.embedding.embed(req.model, texts, cut, joint=False)
    if req.encoding_format == "base64":
        vals: list[Any] = [base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode()
                           for v in emb.vectors]
    else:
        vals = emb.vectors.tolist()
    data = [EmbeddingItem(index=i, embedding=v, truncated=emb.truncated[i],
                          route=emb.routes[i] if emb.routes else None) for i, v in enumerate(vals)]
    return EmbeddingsResponse(data=data, model=emb.model,
                              usage=Usage(prompt_tokens=emb.total_tokens, total_tokens=emb.total_tokens))

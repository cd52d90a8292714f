from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from ..auth import require_scope
from ..deps import state

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_scope("read"))])


@router.get("/models", summary="Registered encoders: dimension, domain, precision, status, metadata")
async def list_models(svc: Any = Depends(state)) -> dict[str, Any]:
    return {"object": "list", "default": svc.pool.default_name, "data": svc.pool.describe()}
